"""
artrm: the seven-rung ladder of "Tiny Autoregressive Recursive Models"
(Rauba, Fanconi, van der Schaar, arXiv 2603.08082), in one file.

The question: under a fixed budget of block passes per token, does it matter how
the passes are spent? Every rung uses the same pre-LayerNorm GPT `Block`, the same
token stream and the same next-token loss; each rung switches on one idea more than
the rung above it (see LADDER):

  1 dense      N distinct blocks                        h = Block_t(h)
  2 iter       one shared block f, N times              h = f(h)
  3 iter_step  + a learned step embedding s_t           h = f(h + s_t)
  4 ut         + ACT halting, ACT-weighted readout      (Graves 2016; Dehghani et al. 2019)
  5 dual_ut    + two streams: z = f(x+y+z+s_t); y = f(y+z+s_t); ACT on y
  6 nested_ut  + H cycles of (L z-updates, 1 y-update) per step, truncated gradients
  7 ar_trm     + binary halting head, readout = final y only (TRM, arXiv 2510.04871)

Recurrence runs over depth inside each position: every block call is causal, so every stream
at position t depends only on tokens <= t. Extensions the paper lacks (full_grad,
deep_supervision, halt_loss, random_depth) are flags that default to the paper's behaviour.
"""

from collections import namedtuple
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

HALT_THRESHOLD = 1.0 - 1e-6  # ACT: a position halts when its cumulative p reaches this
DEPTH_REACH, DEPTH_SIGMA = 4, 0.5  # random_depth: draws up to 4N steps, log-normal sigma 0.5

# -----------------------------------------------------------------------------
# The block: the only thing any rung ever evaluates.

class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on CPU, where bernoulli_ costs ~6% of a paper-setting
    step: four 16-bit draws per 64-bit random number, p rounded to a multiple of 1/65536
    (0.1 -> 0.100006), kept values scaled by the exact inverse keep rate (unbiased)."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        k = round(self.p * 65536)                                  # drop when a 16-bit draw < k
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-2**63, None)
        draws = words.view(torch.int16)[:x.numel()].view(x.shape)  # uniform on [-32768, 32767]
        return x * (draws >= k - 32768).to(x.dtype).mul_(65536 / (65536 - k))


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        # q, k, v in one matmul, no bias (as the authors)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_p = config.dropout  # on the attention probabilities, in SDPA (as the authors)
        self.dropout = Dropout(config.dropout)  # on the output

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
                   for t in self.c_attn(x).split(C, dim=2))
        p = self.attn_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                 # (B, T, C)
        return self.dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN GPT block. Its output includes the residual: f(u) = u + delta(u)."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, h):
        h = h + self.attn(self.ln_1(h))
        return h + self.mlp(self.ln_2(h))

# -----------------------------------------------------------------------------
# The ladder and its configuration.

Rung = namedtuple("Rung", "tied step_emb halting two_streams nested")
LADDER = {  #   tied   step_emb halting   two_streams nested
    "dense":     Rung(False, False, None,     False, False),
    "iter":      Rung(True,  False, None,     False, False),
    "iter_step": Rung(True,  True,  None,     False, False),
    "ut":        Rung(True,  True,  "act",    False, False),
    "dual_ut":   Rung(True,  True,  "act",    True,  False),
    "nested_ut": Rung(True,  True,  "act",    True,  True),
    "ar_trm":    Rung(True,  True,  "binary", True,  True),
}


@dataclass
class Config:
    model: str = "ar_trm"          # the rung, a key of LADDER
    budget: int = 24               # block passes per token per forward, at most (no early halt)
    n_embd: int = 384              # width d
    n_head: int = 6
    block_size: int = 180          # longest input the positions cover (addition at L=50: 153)
    vocab_size: int = 14           # "0123456789|+=\n", see tasks.py
    dropout: float = 0.1           # on the attention probabilities, attention and MLP outputs
    n_outer: int = 2               # H: outer cycles per ACT step (nested rungs only)
    n_inner: int = 2               # L: z-updates per outer cycle (nested rungs only)
    ponder_weight: float = 0.0     # ACT ponder cost weight; the paper uses 0
    halt_explore: float = 0.25     # ar_trm, training: P(draw a minimum step count), as the paper
    full_grad: bool = False        # extension: nested rungs backprop through every pass
    deep_supervision: bool = False # extension: loss on every step's y, detached between steps (TRM)
    halt_loss: bool = False        # extension: BCE for ar_trm's halt head on "answer exactly right"
    random_depth: bool = False     # extension: each training forward draws its depth (Model.depth)

    def __post_init__(self):  # what a rung makes of the settings (flags.py checks each alone)
        if self.model not in LADDER:
            raise ValueError(f"unknown model {self.model!r}; choose from {', '.join(LADDER)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.budget <= 0 or self.budget % self.passes_per_step:
            k = self.passes_per_step
            raise ValueError(f"budget {self.budget} is impossible for {self.model}: it spends {k} "
                             f"block passes per step, so the budget must be a multiple of {k} "
                             f"(e.g. {', '.join(str(k * i) for i in range(1, 5))})")
        if (self.full_grad or self.deep_supervision) and not self.rung.nested:
            raise ValueError("full_grad and deep_supervision change the truncated gradients of "
                             "nested_ut and ar_trm only")
        if self.halt_loss and self.rung.halting != "binary":
            raise ValueError("halt_loss trains ar_trm's binary halting head; other rungs have none")
        if self.random_depth and not self.rung.tied:
            raise ValueError("random_depth draws the depth of a tied rung; dense has none")

    @property
    def rung(self):
        return LADDER[self.model]

    @property
    def passes_per_step(self):
        if not self.rung.two_streams:
            return 1
        return self.n_outer * (self.n_inner + 1) if self.rung.nested else 2

    @property
    def n_steps(self):  # N, the depth the budget buys this rung
        return self.budget // self.passes_per_step

    @property
    def max_steps(self):  # the deepest a training forward runs; the step embeddings reach it
        return DEPTH_REACH * self.n_steps if self.random_depth else self.n_steps

# -----------------------------------------------------------------------------
# Readouts: how the per-step answers y_1..y_N become the output.

class FinalReadout:
    """Rungs 1-3: the output is the last state."""
    head_flops = staticmethod(lambda d, T: 0)  # per token and step: no halting head

    def __init__(self, model, y, n_steps):
        self.n_steps = n_steps
        self.out, self.steps = None, torch.zeros(y.shape[:2], device=y.device)  # steps: (B, T)

    def update(self, y, t):
        self.out, self.steps = y, self.steps + 1
        return t == self.n_steps - 1


class ACTReadout:
    """Rungs 4-6: Graves-style ACT per position (the Universal Transformer's), as the authors
    compute it. A position halts once its cumulative halting probability plus this step's p
    reaches the model's halt_threshold (trained at HALT_THRESHOLD), and adds its remainder
    1 - cum. Halted positions are still computed (others attend to them) but add nothing
    more; the caller exits early only when the whole batch has halted."""
    head_flops = staticmethod(lambda d, T: 2 * d)  # the halting unit at every position

    def __init__(self, model, y, n_steps):
        self.halt, self.n_steps, self.threshold = model.halt, n_steps, model.halt_threshold
        B, T, _ = y.shape
        self.halted = torch.zeros(B, T, dtype=torch.bool, device=y.device)
        self.cum = torch.zeros(B, T, device=y.device)     # cumulative halting probability
        self.rem = torch.zeros(B, T, device=y.device)     # remainder, set when a position halts
        self.steps = torch.zeros(B, T, device=y.device)   # ACT n_updates
        self.out = torch.zeros_like(y)

    def update(self, y, t):
        p = torch.sigmoid(self.halt(y)).squeeze(-1)                             # (B, T)
        running = ~self.halted
        halting = running & (self.cum + p >= self.threshold)
        going = running & ~halting                       # still running after this step
        # a halting position adds what is left
        self.rem = torch.where(halting, 1 - self.cum, self.rem)
        self.cum = torch.where(going, self.cum + p, self.cum)
        weight = torch.where(halting, self.rem, p * going)                      # (B, T)
        last = t == self.n_steps - 1
        if last:  # a position still running adds p, then the rest: 1 - cum with this p in cum
            self.rem = torch.where(going, 1 - self.cum, self.rem)
            weight = weight + self.rem * going
        self.steps = self.steps + running
        self.halted = self.halted | halting
        self.out = self.out + weight.unsqueeze(-1) * y                          # (B, T, C)
        return last or bool(self.halted.all())  # the one sync per step

    def ponder_cost(self):  # ACT's N + R; R of a position that never halted: left after p
        return (self.steps + self.rem).mean()


class HaltReadout:
    """Rung 7, as the authors' code: a binary halting head reads y at position 0 (causal, as
    position 0 sees the first token only, but blind to whether the answer is right). A
    sequence halts when its logit > 0 or at the last step; its output is y at that step (each
    its own: the README's fidelity). The paper's exploration: in training, a sequence draws
    with chance halt_explore a minimum step count, uniform in 1..N, not to halt before. Quirk
    kept: the head starts at weight 0, bias -5 and gets no loss, so it never fires and every
    forward runs the whole budget; halt_loss (an extension) trains it."""
    head_flops = staticmethod(lambda d, T: 2 * d / T)  # at position 0 only

    def __init__(self, model, y, n_steps):
        self.halt, self.n_steps = model.halt, n_steps
        B, T, _ = y.shape
        self.done = torch.zeros(B, dtype=torch.bool, device=y.device)
        self.steps = torch.zeros(B, T, device=y.device)
        self.out = torch.zeros_like(y)
        self.min_steps = torch.zeros(B, dtype=torch.long, device=y.device)
        if model.training and model.config.halt_explore > 0:
            explore = torch.rand(B, device=y.device) < model.config.halt_explore
            drawn = torch.randint(1, self.n_steps + 1, (B,), device=y.device)
            self.min_steps = torch.where(explore, drawn, self.min_steps)      # (B,)

    def update(self, y, t):
        last = t == self.n_steps - 1
        fires = self.halt(y[:, 0]).squeeze(-1) > 0                             # (B,)
        stop = (fires | last) & (t + 1 >= self.min_steps)                      # (B,)
        new = stop & ~self.done
        # only a step that some sequence reads out joins the graph (and the backward)
        if bool(new.any()):
            self.out = torch.where(new[:, None, None], y, self.out)              # (B, T, C)
        self.steps = self.steps + (~self.done).float().unsqueeze(-1)
        self.done = self.done | stop
        return last or bool(self.done.all())


READOUTS = {None: FinalReadout, "act": ACTReadout, "binary": HaltReadout}


def cross_entropy(logits, targets):
    """Mean next-token loss over the answer tokens: the prompt's targets are -100, the
    ignore_index of F.cross_entropy (tasks.IGNORE_INDEX)."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

# -----------------------------------------------------------------------------
# The model: one class for every rung.

class Model(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        rung, d = config.rung, config.n_embd
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.block_size, d)  # learned absolute positions, no RoPE
        n_blocks = 1 if rung.tied else config.n_steps  # dense: N distinct; 2-7: one, again
        self.blocks = nn.ModuleList(Block(config) for _ in range(n_blocks))
        if rung.step_emb:  # s_t, added to every block call of step t
            self.step_emb = nn.Embedding(config.max_steps, d)
        if rung.two_streams:  # y (answer) and z (latent) start from learned vectors
            self.y_init = nn.Parameter(torch.zeros(d))
            self.z_init = nn.Parameter(torch.zeros(d))
        if rung.halting:
            self.halt = nn.Linear(d, 1)
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, config.vocab_size)  # not tied to wte; a bias, as the authors
        self.apply(self._init_weights)
        if rung.two_streams:
            nn.init.normal_(self.y_init, std=0.02)
            nn.init.normal_(self.z_init, std=0.02)
        if rung.halting == "binary":  # TRM's q-head init: starts far from halting
            nn.init.zeros_(self.halt.weight)
            nn.init.constant_(self.halt.bias, -5.0)
        self.last_steps = None  # (B, T): the steps each position ran in the latest forward
        self.last_n_steps = config.n_steps  # the steps that forward could run at most
        self.halt_threshold = HALT_THRESHOLD  # ACT's; evaluate.py --eval_thresholds moves it

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, n_steps=None, extend="cycle", on_step=None):
        """Logits (B, T, V) and the loss if targets are given. n_steps (evaluation only) runs
        a tied rung for more or fewer steps than it trained with: thinking longer or shorter.
        Past the trained steps the step embeddings cycle, as the authors' inference-scaling
        script does (extend="cycle": s_1..s_N, s_1...), or the last repeats (extend="last").
        on_step(t, y, readout) is called after each step's readout update (sample.py --steps)."""
        c = self.config
        N = n_steps or self.depth()
        if N != c.n_steps and not c.rung.tied:
            raise ValueError("dense has no tied depth to extend: its depth is its parameters")
        B, T = idx.size()
        if T > c.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {c.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)                                       # (B, T, C)
        y = self.y_init.expand(B, T, -1) if c.rung.two_streams else x           # (B, T, C)
        z = self.z_init.expand(B, T, -1) if c.rung.two_streams else None        # (B, T, C)
        readout = READOUTS[c.rung.halting](self, y, N)
        per_step = []  # (ce, bce) of every step's y, only for the extensions
        for t in range(N):
            if self.truncated:  # each step starts from a detached state
                y, z = y.detach(), z.detach()
            # step t adds s_k: k = t within the trained steps, past them as extend says
            k = t % c.max_steps if extend == "cycle" else min(t, c.max_steps - 1)
            y, z = self.step(x, y, z, k)
            if targets is not None and (c.deep_supervision or c.halt_loss):
                per_step.append(self.step_losses(y, targets))
            done = readout.update(y, t)
            if on_step is not None:
                on_step(t, y, readout)
            if done:
                break
        self.last_steps, self.last_n_steps = readout.steps.detach(), N
        logits = self.lm_head(self.ln_f(readout.out))                           # (B, T, V)
        if targets is None:
            return logits, None
        if c.deep_supervision:  # the mean of every step's loss, not the readout's
            loss = torch.stack([ce for ce, _ in per_step]).mean()
        else:
            loss = cross_entropy(logits, targets)
        if c.halt_loss:
            loss = loss + torch.stack([bce for _, bce in per_step]).mean()
        if c.ponder_weight and hasattr(readout, "ponder_cost"):
            loss = loss + c.ponder_weight * readout.ponder_cost()
        return logits, loss

    def depth(self):
        """The steps a forward runs unless told: N; with random_depth each training forward
        draws its own as Huginn does (Geiping et al. 2025): 1 + Poisson(lambda), lambda
        log-normal of mean N - 1: mean N (the fixed rung's compute, in expectation), a heavy
        tail cut at max_steps; from torch's CPU generator, so the seed fixes it."""
        c = self.config
        if not (self.training and c.random_depth):
            return c.n_steps
        lam = (c.n_steps - 1) * torch.exp(DEPTH_SIGMA * torch.randn(()) - DEPTH_SIGMA ** 2 / 2)
        return min(1 + int(torch.poisson(lam)), c.max_steps)

    @property
    def truncated(self):  # rungs 6-7 as in the authors' code: detach per step, no_grad cycles
        return self.config.rung.nested and not self.config.full_grad

    def step(self, x, y, z, t):
        """The block passes of step t. Single stream: y is h and z is unused."""
        c = self.config
        s = self.step_emb.weight[t] if c.rung.step_emb else 0  # (C,)
        f = self.blocks[0 if c.rung.tied else t]  # dense: step t's own block
        if not c.rung.two_streams:
            return f(y + s), z
        n_outer, n_inner = (c.n_outer, c.n_inner) if c.rung.nested else (1, 1)
        for cycle in range(n_outer):
            # truncated gradients: only the last outer cycle builds a graph
            grad = torch.is_grad_enabled() and (cycle == n_outer - 1 or not self.truncated)
            with torch.set_grad_enabled(grad):
                for _ in range(n_inner):
                    z = f(x + y + z + s)  # the latent sees the question x ...
                y = f(y + z + s)          # ... the answer does not: that tells f which job it does
        return y, z

    def step_losses(self, y, targets):
        """Extensions: the loss of one step's answer y (deep supervision) and, with
        halt_loss, TRM's halting BCE against 'every answer token is already right'."""
        logits = self.lm_head(self.ln_f(y))                                     # (B, T, V)
        ce = cross_entropy(logits, targets)
        if not self.config.halt_loss:
            return ce, None
        right = ((logits.argmax(-1) == targets) | (targets < 0)).all(dim=1)  # (B,); prompt: right
        q = self.halt(y[:, 0]).squeeze(-1)                                      # (B,)
        return ce, F.binary_cross_entropy_with_logits(q, right.float())

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, generator=None, n_steps=None,
                 extend="cycle"):
        """Decode a whole batch at once. temperature 0 is greedy; the paper's code
        samples at temperature 1. No KV cache: the depth recurrence halts per forward."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx, n_steps=n_steps, extend=extend)
            logits = logits[:, -1, :]                                            # (B, V)
            if temperature > 0:
                probs = F.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)          # (B, 1)
            else:
                nxt = logits.argmax(dim=-1, keepdim=True)                        # (B, 1)
            idx = torch.cat((idx, nxt), dim=1)
        return idx

    def configure_optimizers(self, lr, weight_decay=0.01):
        # AdamW decaying every parameter, biases and LayerNorm gains too, as the authors (nanoGPT
        # exempts vectors); betas torch's. fused: one kernel; on CPU from torch 2.4 (pytorch#123074)
        device = self.lm_head.weight.device.type
        fused = device == "cuda" or (device == "cpu" and torch.__version__ >= "2.4")
        return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)

    # -------------------------------------------------------------------------
    # Compute accounting: the currency is block passes per token.

    @property
    def final_only(self):
        # Every step's last cycle builds a graph (the halting head may pick any step's y),
        # but with truncation and a final-only readout (ar_trm) the loss reaches only the
        # step that is read out: its passes alone receive gradient in training.
        c = self.config
        every_step = c.deep_supervision or c.halt_loss  # losses that read every step's y
        return self.truncated and c.rung.halting == "binary" and not every_step

    def compute_stats(self, seq_len=None, steps=None):
        """Parameters, block passes per token per forward (at the maximum), those that carry
        gradient in training, and training FLOPs per token: every matmul's forward FLOPs plus
        2x for the backward of the passes with gradient. A block pass costs 24 d^2 (qkv 6,
        proj 2, mlp 16) + 4 d * ctx for attention, ctx = (T+1)/2 keys on average under the
        causal mask (embeddings, LayerNorms, softmaxes not counted). `steps` (halting rungs:
        the mean steps a position, or a batch, ran) gives the FLOPs of that many, not N."""
        c = self.config
        T = seq_len or c.block_size
        d, N = c.n_embd, steps or c.n_steps
        grad_steps = 1 if self.final_only else N  # the steps whose passes receive gradient
        grad_passes = grad_steps * (c.n_inner + 1 if self.truncated else c.passes_per_step)
        pass_flops = 24 * d * d + 4 * d * (T + 1) / 2
        heads = N if c.deep_supervision or c.halt_loss else 1  # lm_head readouts per forward
        head_flops = heads * 2 * d * c.vocab_size
        halt_flops = READOUTS[c.rung.halting].head_flops(d, T)  # per step
        fwd = N * c.passes_per_step * pass_flops + head_flops + N * halt_flops
        bwd = 2 * (grad_passes * pass_flops + head_flops + grad_steps * halt_flops)
        return {
            "params": sum(p.numel() for p in self.parameters()),
            "block_passes": c.budget,
            "grad_block_passes": grad_passes,
            "train_flops_per_token": fwd + bwd,
            # one training forward (evaluation reads one lm_head, not N)
            "forward_flops_per_token": fwd,
        }

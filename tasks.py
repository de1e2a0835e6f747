"""
The paper's three character-level tasks, generated as tensors on the target device.

    copy      x|x\\n              3907|3907\\n
    reverse   x|rev(x)\\n         3907|7093\\n
    addition  a+b=(a+b)\\n        0451+9872=10323\\n   (answer MSB first, zero-padded to L+1)

Operands are exactly L uniform random digits (leading zeros allowed). A batch is as
long as its examples (every example of a task at one L has the same length), never
padded to block_size. The loss covers the answer and the one closing newline.
A task is one row of TASKS: everything else (the run, the report, sample.py) reads it
from there. Below the generators, how a model is scored on a task: fixed held-out examples
and their answers decoded a whole batch at once (evaluate).
"""

from collections import namedtuple

import torch

VOCAB = "0123456789|+=\n"
STOI = {ch: i for i, ch in enumerate(VOCAB)}
EOS = STOI["\n"]
IGNORE_INDEX = -100  # targets at prompt positions: F.cross_entropy's default skips them
EVAL_SEED = 10_000_019  # held-out examples come from their own stream, apart from training's


def add_digits(a, b):
    """Digit-wise addition with carry, MSB first: (B, L) + (B, L) -> (B, L+1).
    Works for any L (no int64 overflow at L = 50)."""
    s = torch.zeros(a.size(0), a.size(1) + 1, dtype=torch.long, device=a.device)
    carry = torch.zeros(a.size(0), dtype=torch.long, device=a.device)
    for i in range(a.size(1) - 1, -1, -1):
        total = a[:, i] + b[:, i] + carry
        s[:, i + 1], carry = total % 10, total // 10
    s[:, 0] = carry
    return s


# operands: numbers of L digits in the prompt, joined by `join` and closed by `sep`;
# answer: their digits, each (B, L), -> the answer's digits (B, A), A depending on L only;
# chance: a uniform guess's accuracy per answer character (the report's and figures' line)
Task = namedtuple("Task", "operands join sep answer chance")
TASKS = {
    "copy":     Task(1, "",  "|", lambda a: a,         0.1),
    "reverse":  Task(1, "",  "|", lambda a: a.flip(1), 0.1),
    "addition": Task(2, "+", "=", add_digits,          0.1),
}


def encode(text):
    return [STOI[ch] for ch in text]


def decode(ids):
    return "".join(VOCAB[int(i)] for i in ids)


def prompt_len(task, n_digits):
    t = TASKS[task]
    return t.operands * n_digits + (t.operands - 1) * len(t.join) + len(t.sep)


def answer_len(task, n_digits):
    t = TASKS[task]
    return t.answer(*[torch.zeros(1, n_digits, dtype=torch.long)] * t.operands).size(1)


def seq_len(task, n_digits):
    """Length of the model's input (the example without its last token)."""
    return prompt_len(task, n_digits) + answer_len(task, n_digits)


def make_examples(task, n_digits, batch_size, generator=None, device="cpu"):
    """Whole examples, prompt + answer + newline, as a (B, seq_len + 1) LongTensor."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if n_digits <= 0:
        raise ValueError(f"n_digits must be positive, got {n_digits}")
    t, B, L = TASKS[task], batch_size, n_digits
    text = lambda s: torch.tensor(encode(s), device=device).expand(B, len(s))  # (B, len(s))
    ops = [torch.randint(0, 10, (B, L), generator=generator, device=device)  # (B, L) digits
           for _ in range(t.operands)]
    parts = [ops[0]]
    for op in ops[1:]:
        parts += [text(t.join), op]
    parts += [text(t.sep), t.answer(*ops), text("\n")]
    return torch.cat(parts, dim=1)  # (B, seq_len + 1)


def get_batch(task, n_digits, batch_size, generator=None, device="cpu"):
    """(idx, targets), both (B, T): targets is idx shifted by one, prompt positions masked."""
    ex = make_examples(task, n_digits, batch_size, generator, device)
    idx, targets = ex[:, :-1], ex[:, 1:].clone()
    targets[:, : prompt_len(task, n_digits) - 1] = IGNORE_INDEX  # predict only answer + newline
    return idx, targets

# -----------------------------------------------------------------------------
# Evaluation: batched decoding of the answer from the prompt, no teacher forcing.

def eval_set(task, n_digits, n_examples, device):
    g = torch.Generator().manual_seed(EVAL_SEED + n_digits)  # fixed, identical on every device
    return make_examples(task, n_digits, n_examples, g).to(device)


@torch.no_grad()
def evaluate(model, task, lengths, n_examples, device, temperature=0.0, show=0, n_steps=None,
             extend="cycle"):
    """Per length: char_acc, seq_acc, accuracy by answer position and the block passes per
    token (passes: as its positions ran; spent_passes: as the batch ran, each forward until its
    last position halted), greedy (or sampled) on the fixed examples. n_steps: Model.forward."""
    was_training, c = model.training, model.config
    model.eval()
    results, steps = {}, []  # steps: the executed steps per position of every decoding forward
    hook = model.register_forward_hook(lambda m, i, o: steps.append(m.last_steps))
    per_forward = lambda reduce: float(torch.stack([reduce(s) for s in steps]).mean())
    for n in lengths:
        ex = eval_set(task, n, n_examples, device)
        P, A = prompt_len(task, n), answer_len(task, n)
        g = torch.Generator(device=device).manual_seed(EVAL_SEED) if temperature > 0 else None
        steps.clear()
        out = model.generate(ex[:, :P], A, temperature=temperature, generator=g,
                             n_steps=n_steps, extend=extend)
        right = out[:, P:] == ex[:, P:P + A]                                    # (B, A)
        results[str(n)] = {"char_acc": right.float().mean().item(),
                           "seq_acc": right.all(1).float().mean().item(),
                           "pos_acc": [round(v, 4) for v in right.float().mean(0).tolist()],
                           "passes": per_forward(torch.mean) * c.passes_per_step,
                           # what the batch ran: each forward until its last position halted
                           "spent_passes": per_forward(torch.max) * c.passes_per_step}
        for i in torch.nonzero(~right.all(1)).flatten()[:show].tolist():
            said, truth = (decode(t).replace("\n", "⏎")
                           for t in (out[i, P:P + A], ex[i, P:P + A]))
            print(f"  L={n}: {decode(ex[i, :P])}  model {said}  right {truth}")
    hook.remove()
    model.train(was_training)
    return results


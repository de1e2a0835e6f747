"""
Ask a trained rung your own question, and watch it think step by step.

    python sample.py --ckpt out/reverse_ar_trm_s1337/ckpt.pt --prompt "3907|"
    python sample.py --ckpt out/reverse_ut_s1337/ckpt.pt                  # a few held-out examples
    python sample.py --ckpt out/reverse_ut_s1337/ckpt.pt --prompt "3907|" --steps [--plot steps.png]

The checkpoint's own config and task decide the model and the format of a prompt
(copy and reverse: digits then '|'; addition: a+b= with L digits each), and every answer
is marked right or wrong beside the right one. --steps shows
the answer as read out after every step of the rung (the same ln_f and lm_head applied to
that step's answer stream, with the model's own final answer fed in, so that the steps
can be compared), '^' under what changed since the step before; for the ACT rungs where
each answer position halted and its halting weight, for ar_trm the halting head's logit,
for dense the readout after each of its blocks. Nothing of the model is changed: the
steps are recorded from a normal forward.
"""

import sys

import torch

import artrm
import evaluate
import flags
import resume
import tasks
from machine import get_device
from records import UserError


def parse_args(argv=None):
    p = flags.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--ckpt", required=True, help="a run's ckpt.pt, or a model from export.py")
    p.add_argument("--prompt", action="append", default=[],
                   help="a question, e.g. 3907| (may repeat)")
    p.add_argument("--examples", type=int, default=3,
                   help="with no --prompt: this many held-out examples (at most 100)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 greedy, 1 samples as the paper's code")
    p.add_argument("--steps", action="store_true", help="the answer after every step of the rung")
    p.add_argument("--plot", default="",
                   help="with --steps: write the steps as a figure to this PNG")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--seed", type=int, default=1337,
                   help="for --temperature > 0 and the held-out draw")
    return p.parse_args(argv)


def encode_prompt(text, task, block_size):
    """The prompt's tokens, its operand length L and the right answer (its text, as the model
    should write it), or one line saying what is wrong with the prompt."""
    t = tasks.TASKS[task]
    bad = sorted(set(text) - set(tasks.VOCAB))
    if bad:
        raise UserError(f"prompt {text!r} has characters outside the vocabulary "
                        f"{tasks.VOCAB!r}: {''.join(bad)!r}")
    body = text[:len(text) - len(t.sep)]
    operands = body.split(t.join) if t.join else [body]
    L = len(operands[0])
    shaped = text.endswith(t.sep) and len(operands) == t.operands and L > 0
    if not shaped or any(len(d) != L or not d.isdigit() for d in operands):
        example = tasks.eval_set(task, 4, 1, "cpu")[0, :tasks.prompt_len(task, 4)]
        joined = f" joined by {t.join}" if t.join else ""
        raise UserError(f"prompt {text!r} is not a {task} question ({t.operands} number(s) of "
                        f"the same length{joined}, then {t.sep}; e.g. {tasks.decode(example)})")
    flags.check_fits(task, [L], block_size, "the checkpoint's block_size")
    digits = [torch.tensor([[int(c) for c in d]]) for d in operands]  # each (1, L)
    right = tasks.decode(t.answer(*digits)[0]) + "⏎"  # the answer and its closing newline
    return torch.tensor([tasks.encode(text)]), L, right


class Recorder:
    """Watches one forward as its on_step observer and keeps, for every step, the answer
    stream y and what the readout decides from it (ACT: each position's halting
    probability; ar_trm: the halting head's logit). It only reads, so the forward computes
    what it always does."""

    def __init__(self):
        self.ys, self.p, self.logits = [], [], []

    def __call__(self, t, y, readout):
        self.ys.append(y)
        if isinstance(readout, artrm.ACTReadout):
            self.p.append(torch.sigmoid(readout.halt(y)).squeeze(-1))                   # (B, T)
        if isinstance(readout, artrm.HaltReadout):
            self.logits.append(readout.halt(y[:, 0]).squeeze(-1))                       # (B,)


@torch.no_grad()
def steps_of(model, idx):
    """The logits read out after every step, the logits of the forward itself, and what the
    recorder kept, all from one normal forward that the recorder watches."""
    recorder = Recorder()
    logits, _ = model(idx, on_step=recorder)
    per_step = [model.lm_head(model.ln_f(y)) for y in recorder.ys]          # [(B, T, V)]
    return per_step, logits, recorder


def show_steps(model, prompt, answer):
    """A row per step: the answer read out after it, with '^' under what changed since the
    step before; the model's own answer is fed in, so that every step reads the same input."""
    P, A = prompt.size(1), answer.size(1)
    per_step, logits, rec = steps_of(model, torch.cat([prompt, answer[:, :-1]], dim=1))
    at = slice(P - 1, P - 1 + A)  # the positions that predict the answer
    read = lambda lg: tasks.decode(lg[0, at].argmax(-1)).replace("\n", "⏎")
    rows = [read(lg) for lg in per_step]
    c = model.config
    name = "step" if c.rung.tied else "block"
    print(f"  {len(rows)} {name}s of {c.passes_per_step} block pass(es) each; "
          "the answer read out after each:")
    for t, row in enumerate(rows):
        changed = " " * len(row)
        if t:
            changed = "".join("^" if a != b else " " for a, b in zip(row, rows[t - 1]))
        extra = ""
        if rec.logits:
            extra = f"  halting logit {float(rec.logits[t][0]):+.2f}"
        elif rec.p:
            extra = f"  p {' '.join(f'{v:.2f}' for v in rec.p[t][0, at].tolist())}"
        print(f"  {name} {t + 1:2d}  {row}  {changed}{extra}")
    if rec.p:  # ACT reads out a weighted sum of the steps, not the last one
        ran = " ".join(str(int(s)) for s in model.last_steps[0, at].tolist())
        print(f"  output   {read(logits)}   (ACT's weighted sum; "
              f"the steps each answer position ran: {ran})")
    return rows, read(logits), rec


def main(argv=None):
    try:
        args = parse_args(argv)
        if not 1 <= args.examples <= 100:
            raise UserError(f"--examples takes 1 to 100, got {args.examples}")
        if not 0 <= args.temperature < float("inf"):
            raise UserError("--temperature must be zero or positive and finite, "
                            f"got {args.temperature}")
        ckpt = resume.load_checkpoint(args.ckpt, resume.MODEL_KEYS)
        if "task" not in ckpt:
            raise UserError(f"{args.ckpt} does not say which task it was trained on")
        device = get_device(args.device, UserError)
        model = evaluate.restore_model(ckpt, args.ckpt, device).eval()
        task = ckpt["task"]
        g = torch.Generator(device=device).manual_seed(args.seed)
        trained = ckpt.get("n_digits")
        questions = [encode_prompt(p, task, model.config.block_size) for p in args.prompt]
        for text, (_, L, _) in zip(args.prompt, questions):
            if trained is not None and L != trained:  # a warning, not an error: it may be asked
                print(f"warning: {text!r} has {L}-digit numbers; the model was trained on "
                      f"{trained} (off that length its answers are rarely right)",
                      file=sys.stderr)
        if not args.prompt:  # a few of the held-out examples it was evaluated on, drawn by --seed
            L = trained or 6
            ex = tasks.eval_set(task, L, 100, "cpu")
            draw = torch.Generator().manual_seed(args.seed)
            pick = torch.randperm(len(ex), generator=draw)[:args.examples]
            P = tasks.prompt_len(task, L)
            questions = [(ex[i:i + 1, :P], L, tasks.decode(ex[i, P:]).replace("\n", "⏎"))
                         for i in pick.tolist()]
        for prompt, L, right in questions:
            prompt = prompt.to(device)
            A = tasks.answer_len(task, L) + 1  # and the closing newline
            out = model.generate(prompt, A, temperature=args.temperature,
                                 generator=g if args.temperature else None)
            answer = out[:, prompt.size(1):]
            said = tasks.decode(answer[0]).replace("\n", "⏎")
            mark = "✓" if said == right else "✗"
            print(f"{tasks.decode(prompt[0])}{said}   right: {right} {mark}")
            if args.steps:
                rows, _, _ = show_steps(model, prompt, answer)
                if args.plot:
                    plot_steps(rows, model, tasks.decode(prompt[0]), args.plot)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def plot_steps(rows, model, prompt, path):
    """The steps as a figure: a row per step, a column per answer position, each cell the
    digit read out, shaded where it changed since the step before."""
    import figures
    plt = figures.pyplot()
    if plt is None:
        return
    changed = [[0] * len(rows[0])] + [[int(a != b) for a, b in zip(r, p)]
                                      for r, p in zip(rows[1:], rows)]
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(rows[0]), 0.8 + 0.3 * len(rows)))
    ax.imshow(changed, cmap="Oranges", vmin=0, vmax=1.5, aspect="auto")
    for t, row in enumerate(rows):
        for j, ch in enumerate(row):
            ax.text(j, t, ch, ha="center", va="center", fontsize=9)
    name = "step" if model.config.rung.tied else "block"
    ax.set(xlabel="answer position", ylabel=name,
           title=f"{model.config.model}: {prompt} {name} by {name} (shaded: changed)")
    ax.set_xticks(range(len(rows[0])), range(1, len(rows[0]) + 1))
    ax.set_yticks(range(len(rows)), range(1, len(rows) + 1))
    figures.save(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

"""
The paper's three character-level tasks, generated as tensors on the target device.

    copy      x|x\\n              3907|3907\\n
    reverse   x|rev(x)\\n         3907|7093\\n
    addition  a+b=(a+b)\\n        0451+9872=10323\\n   (answer MSB first, zero-padded to L+1)

Operands are exactly L uniform random digits (leading zeros allowed). A batch is as
long as its examples (every example of a task at one L has the same length), never
padded to block_size. The loss covers the answer and the one closing newline.
"""

import torch

from artrm import IGNORE_INDEX

VOCAB = "0123456789|+=\n"
STOI = {ch: i for i, ch in enumerate(VOCAB)}
TASKS = ("copy", "reverse", "addition")
SEP, PLUS, EQ, EOS = (STOI[ch] for ch in "|+=\n")


def encode(text):
    return [STOI[ch] for ch in text]


def decode(ids):
    return "".join(VOCAB[int(i)] for i in ids)


def prompt_len(task, n_digits):
    return 2 * n_digits + 2 if task == "addition" else n_digits + 1


def answer_len(task, n_digits):
    return n_digits + 1 if task == "addition" else n_digits


def seq_len(task, n_digits):
    """Length of the model's input (the example without its last token)."""
    return prompt_len(task, n_digits) + answer_len(task, n_digits)


def make_examples(task, n_digits, batch_size, generator=None, device="cpu"):
    """Whole examples, prompt + answer + newline, as a (B, seq_len + 1) LongTensor."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if n_digits <= 0:
        raise ValueError(f"n_digits must be positive, got {n_digits}")
    B, L = batch_size, n_digits
    col = lambda tok: torch.full((B, 1), tok, dtype=torch.long, device=device)
    a = torch.randint(0, 10, (B, L), generator=generator, device=device)  # (B, L) digits, MSB first
    if task == "copy":
        parts = (a, col(SEP), a)
    elif task == "reverse":
        parts = (a, col(SEP), a.flip(1))
    else:
        b = torch.randint(0, 10, (B, L), generator=generator, device=device)  # (B, L)
        parts = (a, col(PLUS), b, col(EQ), add_digits(a, b))
    return torch.cat(parts + (col(EOS),), dim=1)  # (B, seq_len + 1)


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


def get_batch(task, n_digits, batch_size, generator=None, device="cpu"):
    """(idx, targets), both (B, T): targets is idx shifted by one, prompt positions masked."""
    ex = make_examples(task, n_digits, batch_size, generator, device)
    idx, targets = ex[:, :-1], ex[:, 1:].clone()
    targets[:, : prompt_len(task, n_digits) - 1] = IGNORE_INDEX  # predict only answer + newline
    return idx, targets

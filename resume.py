"""
What out_dir already holds of a run, and the checkpoints it resumes from. Before any work
a run is one of three: finished (skipped), interrupted with a checkpoint (resumed, with
--resume, exactly where it stopped), or new. A run recorded or saved with settings that
change what it trains is refused, never overwritten. Checkpoints are written whole or not
at all, as records are (records.py).
"""

import math
import os
from collections import namedtuple
from dataclasses import asdict, dataclass, field

import torch

from artrm import Model
from records import UserError, atomic_write, read_record, run_name

# Settings a resumed run may change (how it is evaluated and logged, and how long it goes
# on); the rest define what it trains. NOT_THE_RUN: where and how it runs, not what.
RESUMABLE = ("max_iters", "eval_lengths", "eval_examples", "eval_interval", "log_interval",
             "temperature")
NOT_THE_RUN = ("model", "task", "seed", "device", "threads", "compile", "out_dir",
               "ckpt_interval", "resume")
CKPT_KEYS = {"model", "optimizer", "config", "settings", "iter", "data_rng", "torch_rng",
             "history", "wall_s", "passes"}
# What a trained model alone carries (export.py): enough to evaluate it and ask it, not to
# resume it. sample.py and evaluate.py read either file.
MODEL_KEYS = {"model", "config", "iter"}


@dataclass
class Tally:
    """The compute one mode's forwards executed (a halting rung may stop before its budget)."""
    forwards: int = 0
    early_exits: int = 0         # forwards in which the whole batch halted before the last step
    position_steps: float = 0.0  # summed over forwards: the mean steps a position ran
    batch_steps: float = 0.0     # summed: the steps the batch ran (until its last position
                                 # halted), the compute spent; nan where an older part was not
    ceilings: dict = field(default_factory=dict)  # {steps a forward could run: forwards}

    def per_forward(self, name):
        return getattr(self, name) / max(self.forwards, 1)

    def drawn(self):
        """The depths the forwards could run (random_depth draws them): mean, range, counts."""
        n = sorted(self.ceilings)
        mean = sum(k * v for k, v in self.ceilings.items()) / max(sum(self.ceilings.values()), 1)
        return {"mean": mean, "min": n[0], "max": n[-1],
                "forwards": {str(k): self.ceilings[k] for k in n}}


@dataclass
class RunState:
    """What a run carries from one part to the next: its checkpoint saves it, its record
    reads it. parts: what each part ran on ({"code": [...], "threads": [...]})."""
    settings: dict
    parts: dict
    iter: int = 0
    history: list = field(default_factory=list)
    wall_s: float = 0.0
    resumed: list = field(default_factory=list)  # [{"iter", "changed"}] where settings changed
    passes: dict = field(default_factory=lambda: {"train": Tally(), "eval": Tally()})

    def watch(self, model):
        """Count the compute of every forward of model from now on, into passes["train"] or
        passes["eval"]. A batch runs until its last position halts, so the steps it ran are
        the compute spent; the mean is what each position needed."""
        def count(m, inputs, output):
            tally = self.passes["train" if m.training else "eval"]
            tally.forwards += 1
            tally.early_exits += int(m.last_steps.max() < m.last_n_steps)  # a sync, as readouts
            tally.position_steps += float(m.last_steps.mean())
            tally.batch_steps += float(m.last_steps.max())
            tally.ceilings[m.last_n_steps] = tally.ceilings.get(m.last_n_steps, 0) + 1
        return model.register_forward_hook(count)

    def saved(self):
        state = {k: v for k, v in asdict(self).items() if k != "parts"}
        return {**state, **self.parts}  # each part's list by its own name, as records name them

    def resumed_from(self, ckpt, changed):
        """This part's state going on from the checkpoint's: the earlier parts first, and in
        `resumed` the settings it changes (changed: setting_changes from the checkpoint's)."""
        resumed = ckpt.get("resumed", [])
        if changed:  # only RESUMABLE ones get here: say in the record what happened
            resumed = resumed + [{"iter": ckpt["iter"], "changed": changed}]
        return RunState(self.settings, {k: ckpt.get(k, []) + v for k, v in self.parts.items()},
                        ckpt["iter"], ckpt["history"], ckpt["wall_s"], resumed,
                        {mode: tally_of(t) for mode, t in ckpt["passes"].items()})


def tally_of(saved):
    """A Tally from a checkpoint: a dict, or the list of older code (its fields in order; the
    oldest lacks batch_steps, which it did not count)."""
    if isinstance(saved, dict):
        return Tally(**saved)
    return Tally(*saved, *[math.nan] * (4 - len(saved)))  # forwards .. batch_steps


def run_dir(args):
    return os.path.join(args.out_dir, run_name(args.task, args.model, args.seed))


def run_config(args, defaults):
    """The settings that define a run (not where it is written or how it is driven)."""
    return {k: v for k, v in vars(args).items()
            if (k in defaults or k == "preset") and k not in NOT_THE_RUN}


def setting_changes(old, new, defaults):
    """{setting: [old, new]} where new differs from old. A setting an older record lacks
    had its default then (a new knob defaults to the old behaviour)."""
    before = {**defaults, "preset": "laptop"}
    return {k: [old.get(k, before.get(k)), v] for k, v in new.items()
            if old.get(k, before.get(k)) != v}


def check_same_run(changes, where, resume):
    """Refuse to resume or re-run a run with settings that change what it trains."""
    defining = {k: v for k, v in changes.items() if k not in RESUMABLE}
    if defining:
        said = "; ".join(f"{k} {a!r} there, {b!r} asked" for k, (a, b) in defining.items())
        raise UserError(f"{where} was trained with other settings ({said}); use another "
                        f"--out_dir for a new run")
    if changes and not resume:
        raise UserError(f"{where} differs in {', '.join(changes)}; add --resume to continue it "
                        f"with the new value(s), or use another --out_dir")


# What a run does with what out_dir holds of it: "fresh" (nothing, or a failed run: it starts
# afresh), "skip" (finished with these settings) or "resume" (from ckpt). Anything else is
# refused with a UserError. settings: those that define the run (run_config), as asked.
Prior = namedtuple("Prior", "action settings ckpt", defaults=(None,))


def prior(args, config, defaults):
    """The Prior of the run args asks for (its model's Config: config), decided before any
    work from what args.out_dir holds of it."""
    where = run_dir(args)
    path = os.path.join(where, "ckpt.pt")
    record = read_record(os.path.join(where, "record.json"))
    asked = run_config(args, defaults)
    finished = record is not None and record.get("status") == "ok"
    if finished:
        changes = setting_changes(record["config"], asked, defaults)
        if not changes:
            print(f"{run_name(args.task, args.model, args.seed)} is finished in {where}; skipped")
            return Prior("skip", asked)
        check_same_run(changes, where, True)  # what --resume cannot change is refused first
        if args.max_iters < record.get("iters", 0):  # a run goes on, never back
            raise UserError(f"{where} has trained {record['iters']} iterations already, more "
                            f"than --max_iters {args.max_iters}; use another --out_dir")
        if not os.path.exists(path):  # --resume with new RESUMABLE values continues it
            raise UserError(f"{where} is finished but has no checkpoint to continue from with "
                            f"new {', '.join(changes)}; use another --out_dir")
        check_same_run(changes, where, args.resume)  # and it is said that --resume goes on
    if not finished and not args.resume:
        if os.path.exists(path) and record is None:  # interrupted: never start it over silently
            raise UserError(f"{where} holds the checkpoint of an unfinished run; add --resume "
                            f"to continue it, or move it away to start over")
        return Prior("fresh", asked)  # a fresh run, or a failed one starting over
    ckpt = load_checkpoint(path)
    saved = {**ckpt["config"], **ckpt["settings"]}
    check_same_run(setting_changes(saved, {**asdict(config), **asked}, defaults), path, True)
    with torch.device("meta"):  # the shapes of this code's model, without building it
        shapes = {k: v.shape for k, v in Model(config).state_dict().items()}
    if shapes != {k: v.shape for k, v in ckpt["model"].items()}:
        raise UserError(f"{path} was written by an artrm whose model differs from this one; "
                        f"use another --out_dir")
    if args.max_iters < ckpt["iter"]:
        raise UserError(f"{path} has trained {ckpt['iter']} iterations already, more than "
                        f"--max_iters {args.max_iters}")
    return Prior("resume", asked, ckpt)


def save_checkpoint(path, model, optimizer, data_gen, device, state, **run):
    """Everything an exact resume needs: the weights, the optimizer, every random stream,
    the run's state (a RunState) and what it trains on (run: task, seed, n_digits)."""
    cuda = {"cuda_rng": torch.cuda.get_rng_state()} if device == "cuda" else {}
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "config": asdict(model.config), "data_rng": data_gen.get_state(),
            "torch_rng": torch.get_rng_state(), **cuda, **state.saved(), **run}
    atomic_write(path, lambda f: torch.save(ckpt, f))


def restore(ckpt, model, optimizer, data_gen, device):
    """Put the weights, the optimizer and the random streams back as the checkpoint had them."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    data_gen.set_state(ckpt["data_rng"])
    torch.set_rng_state(ckpt["torch_rng"])
    if device == "cuda" and "cuda_rng" in ckpt:
        torch.cuda.set_rng_state(ckpt["cuda_rng"])


def save_model(ckpt, path):
    """The model of a checkpoint alone: its weights and config, and what it was trained on
    and how (task, seed, iterations, settings, code), without optimizer or random state."""
    keep = MODEL_KEYS | {"task", "seed", "n_digits", "settings", "code"}
    atomic_write(path, lambda f: torch.save({k: v for k, v in ckpt.items() if k in keep}, f))


def load_checkpoint(path, keys=CKPT_KEYS):
    """The checkpoint at path, checked to hold at least `keys` (MODEL_KEYS: a model alone
    is enough), or one line saying why it cannot be used."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:  # weights_only: a checkpoint is data, never code to run
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, bad pickle, foreign file: one line, not torch's advice
        raise UserError(f"checkpoint {path} is corrupt or truncated: torch cannot read it as "
                        f"plain tensors and numbers ({type(e).__name__})") from None
    is_ours = isinstance(ckpt, dict) and MODEL_KEYS <= ckpt.keys()
    if not is_ours or not isinstance(ckpt["config"], dict):
        raise UserError(f"{path} is a torch file but not an artrm checkpoint (it lacks the "
                        f"model's config)")
    if not keys <= ckpt.keys():
        raise UserError(f"{path} holds a trained model only, without the optimizer and random "
                        f"state a run resumes from; it can be evaluated and sampled, not resumed")
    return ckpt

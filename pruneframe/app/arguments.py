"""The command line's parser and the checks its arguments get before anything slow runs (no torch import here)."""
from __future__ import annotations

import argparse
import os
import re

DATA_FREE = ("l1", "l2", "magnitude", "group_magnitude", "group_norm", "bn_scale", "lamp", "fpgm", "random")
_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)\s*$", re.IGNORECASE)


def input_shape(text: str) -> tuple[int, ...]:
    """``--input-shape``: sizes separated by commas (or x)."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r}: write sizes separated by commas, e.g. 1,3,224,224") from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"input shape {text!r}: every size must be a positive int")
    return shape


def _target(text: str) -> str:
    """A fraction of the original (0 < x < 1) or a count (2e9, 1.5G, 300M); kept as text, read by pruner.targets."""
    match = _COUNT.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a fraction of the original (0 < x < 1, e.g. 0.5) or a count "
                                         "such as 2e9, 1.5G or 300M")
    return text.strip()


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def _size(text: str) -> int:
    """A memory size in bytes: 2GB, 1.5G, 500MB, 2GiB or a plain number of bytes."""
    match = _SIZE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size such as 2GB, 500MB or 1.5G")
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " "))


def _layers_to_remove(text: str) -> int | tuple[str, ...]:
    """``--remove-layers``: a count (ranked by block influence on calibration data) or block names separated by commas."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or any(n.lstrip("+-").isdigit() for n in names):
        raise argparse.ArgumentTypeError(f"{text!r}: give a count of blocks to remove (2) or their names separated by "
                                         "commas (model.layers.3,model.layers.5)")
    return names


class _StoreGiven(argparse.Action):
    """Store the value and note that it was given (its default alone is no conflict with a target)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def build_parser(version: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pruneframe", description="Structural pruning for PyTorch.")
    parser.add_argument("--version", action="version", version=f"pruneframe {version}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list installed plugins as JSON: name, distribution, version, hooks, what they serve",
                       description="List the installed plugins as JSON. Plugins for a framework (torchvision, timm, "
                                   "transformers) are imported only once that framework is in use, so by default they "
                                   "are listed from their package metadata with \"loaded\": false; --load imports "
                                   "them too and lists what they serve.")
    p.add_argument("--load", "--all", dest="load", action="store_true",
                   help="import every plugin, framework plugins too (slower: imports the frameworks)")
    p.set_defaults(command="plugins")

    p = sub.add_parser("prune", help="prune a model by a ratio or to a MACs/parameter target, print MACs and parameters, save it",
                       description="Prune MODEL (torchvision:NAME, timm:NAME, hf:CONFIG-or-path, FILE.py:factory), "
                                   "print MACs and parameters before and after, and save weights plus pruning plan.")
    p.add_argument("model", help=MODEL_HELP)
    how_much = p.add_mutually_exclusive_group()
    how_much.add_argument("--ratio", type=float, default=0.5, action=_StoreGiven,
                          help="fraction of each group's channels to remove (default 0.5)")
    how_much.add_argument("--target-macs", type=_target, default=None, metavar="N",
                          help="prune until MACs are at or just under N: a fraction of the original (0.5) or a count (1.5G, 2e9)")
    p.add_argument("--target-params", type=_target, default=None, metavar="N",
                   help="prune until parameters are at or just under N: a fraction (0.5) or a count (300M); with "
                        "--target-macs both must hold; not with --ratio")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="a state dict or checkpoint ({'state_dict': ...} or {'model': ...}) to load into the model "
                        "before pruning (read with torch.load(weights_only=True))")
    p.add_argument("--importance", default="l2", help=f"criterion by name (default l2): {', '.join(DATA_FREE)}")
    p.add_argument("--global", dest="global_pruning", action="store_true", help="rank all groups together")
    p.add_argument("--steps", type=int, default=1, help="reach the ratio (or target) in this many steps")
    p.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of this")
    p.add_argument("--remove-layers", type=_layers_to_remove, default=None, metavar="N|NAME[,NAME]",
                   help="first remove whole blocks of the model's layer lists: these (model.layers.3,model.layers.5), or "
                        "the N that change the hidden state least on --calibration text (block influence; hf:DIR with "
                        "--save-pretrained)")
    model_options(p)
    p.add_argument("--all-layers", action="store_true", help="list every layer in the report, unchanged ones too")
    p.add_argument("--out", default=None, help="file to save the pruned model to (required unless --dry-run or --save-pretrained)")
    p.add_argument("--save-pretrained", default=None, metavar="DIR",
                   help="with hf:DIR: write the pruned model as a new Hugging Face directory (safetensors shards, index, "
                        "config, tokenizer files) that from_pretrained loads; streamed shard by shard when the checkpoint "
                        "is larger than --max-memory")
    p.add_argument("--max-memory", type=_size, default=None, metavar="SIZE",
                   help="with --save-pretrained: prune in memory only if the checkpoint's weights fit in SIZE (2GB, 500MB); "
                        "otherwise plan on the meta device and stream (default: half the memory available)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="with --save-pretrained and --importance activation|taylor|hessian: calibration text, one sample "
                        "a line or JSON lines with a \"text\" field, tokenised with the checkpoint's tokenizer")
    p.add_argument("--calibration-samples", type=int, default=128, metavar="N", help="use the first N samples (default 128)")
    p.add_argument("--calibration-length", type=int, default=128, metavar="TOKENS",
                   help="truncate each sample to this many tokens (default 128)")
    p.add_argument("--keep-loadable", action=argparse.BooleanOptionalAction, default=True,
                   help="leave whole the groups the model's own format cannot state (a Hugging Face config: BERT's or "
                        "GPT-2's attention width), so from_pretrained still loads the result (default: on; --out files "
                        "load with pruneframe.load_pruned either way)")
    p.add_argument("--dry-run", action="store_true",
                   help="build, plan and report what would be removed and the MACs/parameters after; write nothing")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: only when stderr is a terminal)")
    p.set_defaults(command="prune", ratio_given=False)

    from .inspect_commands import add_subcommands  # inspect and graph (their modules import nothing heavy)

    add_subcommands(sub)
    return parser


MODEL_HELP = "torchvision:NAME, timm:NAME, hf:CONFIG-or-path or FILE.py:factory"


def model_options(parser: argparse.ArgumentParser) -> None:
    """``--ignore`` and ``--input-shape``, which every command that builds a model takes."""
    parser.add_argument("--ignore", action="append", default=[], metavar="NAME[,NAME...]",
                        help="layers (by name) never to prune; repeat it or separate names with commas")
    parser.add_argument("--input-shape", type=input_shape, default=None, help="example input shape, e.g. 1,3,224,224")


def out_problem(out: str, example: str) -> str | None:
    """What is wrong with an output path (None if nothing); ``example`` is a file name to suggest for a directory."""
    path = os.path.abspath(out)
    if os.path.isdir(path):
        return f"--out {out}: that is a directory; name the file to write, e.g. {os.path.join(out, example)}"
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        return f"--out {out}: the directory {folder} does not exist; create it first (mkdir -p {folder})"
    if not os.access(folder, os.W_OK):
        return f"--out {out}: the directory {folder} is not writable"
    return None


def prune_argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``prune``'s arguments, found before any model is built or torch imported (None if nothing)."""
    targeted = args.target_macs is not None or args.target_params is not None
    if targeted and args.ratio_given:
        return "--ratio and --target-params were both given: the target decides the ratio; pass one of them"
    if targeted:
        args.ratio = None  # the target search sets it
    if args.ratio is not None and not 0.0 <= args.ratio < 1.0:
        return f"--ratio {args.ratio}: pruning_ratio={args.ratio} must be a number in [0, 1), e.g. 0.5 removes half"
    if args.steps < 1:
        return f"--steps {args.steps}: give a positive number of steps"
    if args.round_to is not None and args.round_to < 1:
        return f"--round-to {args.round_to}: give a positive multiple, or leave it out"
    if args.weights is not None:
        if not os.path.exists(args.weights):
            return f"--weights {args.weights}: no such file"
        if os.path.isdir(args.weights):
            return (f"--weights {args.weights}: that is a directory; name the state-dict file in it (for a Hugging Face "
                    "directory, pass hf:DIR as the model: its own weights are loaded)")
        if not os.access(args.weights, os.R_OK):
            return f"--weights {args.weights}: the file is not readable"
    problem = _remove_layers_problem(args) or _pretrained_problem(args)
    if problem or args.save_pretrained is not None:
        return problem
    if args.out is None:
        if not args.dry_run:
            return "--out FILE is missing: name the file to save the pruned model to, or pass --dry-run to write nothing"
        return None
    return out_problem(args.out, "pruned.pth")


def _pretrained_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with --save-pretrained, --max-memory and --calibration (None if nothing)."""
    if args.save_pretrained is None:
        for flag, value in (("--max-memory", args.max_memory), ("--calibration", args.calibration)):
            if value is not None:
                return f"{flag} goes with --save-pretrained DIR (a Hugging Face checkpoint pruned into a new directory)"
        return None
    if not args.model.startswith("hf:") or not os.path.isdir(args.model[3:]):
        return (f"--save-pretrained needs a Hugging Face checkpoint directory as the model (hf:DIR), not {args.model!r}; "
                "use --out FILE for other models")
    if args.out is not None or args.weights is not None or args.target_macs is not None or args.target_params is not None:
        return "--save-pretrained takes the directory's own weights and a --ratio; leave out --out, --weights and --target-*"
    if not args.keep_loadable:
        return ("--no-keep-loadable with --save-pretrained: the saved config could not state what it adds, and "
                "from_pretrained would refuse the directory; save with --out FILE instead (pruneframe.load_pruned loads it)")
    if args.calibration is None and args.importance in ("activation", "taylor", "hessian"):
        return f"--importance {args.importance} needs data: pass --calibration FILE (one text sample a line)"
    if args.calibration is not None:
        if args.importance not in ("activation", "taylor", "hessian") and not _counted_removal(args):
            return (f"--calibration is read by --importance activation, taylor or hessian, and by --remove-layers N; "
                    f"--importance {args.importance} reads only the weights")
        if not os.path.isfile(args.calibration) or not os.access(args.calibration, os.R_OK):
            return f"--calibration {args.calibration}: no such readable file"
    if args.calibration_samples < 1 or args.calibration_length < 1:
        return "--calibration-samples and --calibration-length must be positive"
    from ..files import new_directory_problem  # torch-free, like this module

    problem = new_directory_problem(args.save_pretrained, args.model[3:], may_exist=args.dry_run)
    return f"--save-pretrained {problem}" if problem else None


def _counted_removal(args: argparse.Namespace) -> bool:
    return isinstance(args.remove_layers, int) and args.remove_layers > 0


def _remove_layers_problem(args: argparse.Namespace) -> str | None:
    """A count of layers to remove needs calibration text, which only hf:DIR --save-pretrained reads (None if fine)."""
    if not _counted_removal(args):
        return None
    n = args.remove_layers
    if args.save_pretrained is None:
        return (f"--remove-layers {n}: a count is chosen by block influence on calibration data, which the command line "
                "reads only for hf:DIR --save-pretrained OUT --calibration FILE; name the blocks to remove instead "
                "(--remove-layers layer1.1,layer3.1), or use the Python API (MetaPruner(remove_layers=n) and "
                "pruner.calibrate(batches))")
    if args.calibration is None:
        return (f"--remove-layers {n} ranks the blocks by block influence on calibration text: pass --calibration FILE "
                "(one text sample a line), or name the blocks to remove (--remove-layers model.layers.3,model.layers.5)")
    return None


__all__ = ["DATA_FREE", "MODEL_HELP", "build_parser", "input_shape", "model_options", "out_problem", "prune_argument_problem"]

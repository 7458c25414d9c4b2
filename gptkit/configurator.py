"""
Typed configuration for the flat scripts.

    python train.py [config/file.py ...] [--key=value ...]

Each script declares its knobs in one visible block of Key(...) lines and calls configure(). Config
files are plain Python assignments (nanoGPT's configs run unchanged), each executed in its own
namespace; --key=value overrides are parsed as Python literals, never executed. Everything is
applied left to right and checked against the declared types. A key declared with type=FUNCTION (rl.py's
reward) takes a function defined in a config file; every other function there is a helper, not a setting.
Whatever a user typed wrong raises ConfigError, one sentence that the script turns into `error: ...` and
exit status 2, not a traceback.
"""

import ast
import difflib
import json
import numbers
import os
import sys
import types
from dataclasses import dataclass
from typing import Any

from gptkit.errors import USAGE, UserError

FUNCTION = types.FunctionType  # the type of a key whose value is a function defined in a config file


class ConfigError(UserError):
    """A wrong key, value or config file (exit status 2)."""

    def __init__(self, sentence):
        super().__init__(sentence, status=USAGE)


@dataclass
class Key:
    name: str
    default: Any
    help: str
    type: type = None  # needed only when the default is None; otherwise taken from the default
    choices: tuple = None
    min: Any = None    # the smallest value allowed
    above: Any = None  # values must be greater than this
    max: Any = None    # the largest value allowed
    below: Any = None  # values must be less than this

    def __post_init__(self):
        if self.type is None:
            assert self.default is not None, f"key {self.name}: a None default needs type="
            self.type = type(self.default)

    def check(self, value, source):
        """Return value converted to this key's type, or raise ConfigError saying what is wrong."""
        if value is None and self.default is None:
            return None
        t = self.type
        if t is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            elif type(value) is int and value in (0, 1):
                value = bool(value)
        elif t is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value)  # an int, or a NumPy scalar computed in a config file
        elif t is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = int(value)
        elif t is tuple and isinstance(value, list):
            value = tuple(value)
        if t is FUNCTION and type(value) is not t:
            raise ConfigError(f"{source}: {self.name} must be a function defined in a config file "
                              f"(def {self.name}(...): ...), not {value!r}")
        if type(value) is not t:
            raise ConfigError(
                f"{source}: {self.name} must be {_type_name(t)} but got {value!r}; "
                f"for example --{self.name}={_example(self.default, t)}"
            )
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"{source}: {self.name} must be one of {', '.join(map(str, self.choices))}, not {value!r}"
            )
        if value is not None and not self.in_range(value):
            raise ConfigError(f"{source}: {self.name} must be {self.range_text()}, not {value!r}; "
                              f"for example --{self.name}={self.default}")
        return value

    def in_range(self, value):
        return ((self.min is None or value >= self.min) and (self.above is None or value > self.above)
                and (self.max is None or value <= self.max) and (self.below is None or value < self.below))

    def range_text(self):
        parts = []
        if self.min is not None:
            parts.append(f"at least {self.min}")
        if self.above is not None:
            parts.append(f"greater than {self.above}")
        if self.max is not None:
            parts.append(f"at most {self.max}")
        if self.below is not None:
            parts.append(f"less than {self.below}")
        return " and ".join(parts)


def _type_name(t):
    return {bool: "True or False", int: "an integer", float: "a number", str: "a string"}.get(t, t.__name__)


def _example(default, t):
    if default is not None:
        return default
    return {bool: True, int: 1, float: 0.1, str: "text"}.get(t, "...")


def _unknown(name, keys, source):
    close = difflib.get_close_matches(name, keys, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; run with --help to list the keys"
    return ConfigError(f"{source}: unknown key '{name}'{hint}")


def _parse_literal(text):
    """A value from the command line: a Python literal if it is one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _line_at(path, offset):
    """The line number of byte `offset` of a file."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def _run_file(path, functions=()):
    """Execute a config file in a fresh namespace and return its public assignments, and the functions
    it defines under one of the names in `functions`."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist; check the path (configs live in config/)")
    try:
        with open(path, encoding="utf-8") as f:  # Python's own rule for source files, whatever the locale
            source = f.read()
    except UnicodeDecodeError as e:
        line = _line_at(path, e.start)
        raise ConfigError(f"config file {path}, line {line}, is not UTF-8 text (byte {e.start} cannot be decoded); "
                          f"save it as UTF-8 (e.g. iconv -t utf-8)") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror}); check the path") from None
    namespace = {"__file__": os.path.abspath(path), "__name__": "__config__"}
    try:
        exec(compile(source, path, "exec"), namespace)
    except Exception as e:  # a user's file: report it in one line
        line = getattr(e, "lineno", None)
        where = f"{path}, line {line}" if line else path
        raise ConfigError(f"config file {where} failed to run: {type(e).__name__}: {e}") from None
    return {
        k: v for k, v in namespace.items()
        if not k.startswith("_")
        # imports and helper functions a config file may use are not settings
        and (k in functions or not isinstance(v, (types.ModuleType, types.FunctionType, type)))
    }


def parse(keys, argv, explicit=None, ignored=None):
    """Apply config files and --key=value overrides in order; return the resolved values.
    If `explicit` is a set, the names of the keys that were set are added to it. If `ignored` is a
    set, names in config files that are not keys here are collected in it instead of refused (bench.py
    reads train.py's config files for the settings that shape a step)."""
    by_name = {k.name: k for k in keys}
    values = {k.name: k.default for k in keys}
    explicit = set() if explicit is None else explicit
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                name = arg[2:]
                if name in by_name and by_name[name].type is bool:
                    raw, source = True, f"--{name}"
                else:
                    raise ConfigError(f"{arg} has no value; write it as --{name}=VALUE")
            else:
                name, text = arg[2:].split("=", 1)
                raw, source = _parse_literal(text), arg
            if name not in by_name:
                raise _unknown(name, by_name, arg)
            if by_name[name].type is str and not isinstance(raw, str):
                raw = text  # --out_dir=123, --wandb_run_name=2024: a string key takes the text as typed
            values[name] = by_name[name].check(raw, source)
            explicit.add(name)
        elif arg.endswith(".py") or os.path.sep in arg:
            for name, raw in _run_file(arg, [k.name for k in keys if k.type is FUNCTION]).items():
                if name not in by_name and ignored is not None:
                    ignored.add(name)
                    continue
                if name not in by_name:
                    raise _unknown(name, by_name, f"config file {arg}")
                values[name] = by_name[name].check(raw, f"config file {arg}")
                explicit.add(name)
        else:
            raise ConfigError(
                f"don't know what to do with '{arg}': give config files as path/to/file.py and "
                f"settings as --key=value"
            )
    return values


def help_text(keys, script):
    width = max(len(k.name) for k in keys)
    lines = [f"usage: python {script} [config/file.py ...] [--key=value ...] [--print-config]", "",
             "Config files and --key=value settings apply left to right; --print-config shows the result "
             "and exits.", "", "keys (default):"]
    for k in keys:
        lines.append(f"  {k.name:<{width}}  {k.help} ({k.default!r})")
    return "\n".join(lines)


def configure(keys, argv=None, script=None, announce=True, foreign_file_keys=False):
    """Parse sys.argv for this script's keys. --help and --print-config print and end the program
    (SystemExit(0), as argparse does); a mistake raises ConfigError, which the script's errors.install()
    turns into one sentence and exit status 2.
    foreign_file_keys: config files may set keys of another script, which are skipped (and named)."""
    argv = sys.argv[1:] if argv is None else argv
    script = script or os.path.basename(sys.argv[0])
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(keys, script))
        raise SystemExit(0)
    show_only = "--print-config" in argv  # resolve, print as JSON and exit: check a config without running
    explicit = set()
    ignored = set() if foreign_file_keys else None
    values = parse(keys, [a for a in argv if a != "--print-config"], explicit, ignored)
    if show_only:
        print(json.dumps(values, indent=1, default=str))  # a function: its repr
        raise SystemExit(0)
    cfg = Config(**values)
    cfg._explicit = frozenset(explicit)
    differs = [k.name for k in keys if values[k.name] != k.default]
    if announce and differs and int(os.environ.get("RANK", "0")) == 0:
        print("config: " + ", ".join(f"{n}={values[n]!r}" for n in differs), file=sys.stderr)
    if announce and ignored:
        print(f"config: not used by {script}: {', '.join(sorted(ignored))}", file=sys.stderr)
    return cfg


class Config(types.SimpleNamespace):
    """The resolved keys as attributes (cfg.batch_size); is_set(name) tells whether a config file
    or the command line set a key, as opposed to it keeping its default."""

    def is_set(self, name):
        return name in self._explicit


def rebase(cfg, keys, saved, keep=()):
    """cfg resolved again with a run's saved config (a dict) as the base instead of the defaults: what
    was set now (config files, --key=value) still wins, and the keys in `keep` (settings of the
    machine rather than of the run, such as device) are never taken from the saved run. Saved names
    this script does not know, and saved values it does not accept, are skipped. Returns the new
    Config and {name: (saved value, value now)} for the settings given now that differ from the run."""
    by_name = {k.name: k for k in keys}
    values = {k.name: getattr(cfg, k.name) for k in keys}
    for name, value in saved.items():
        if name in by_name and name not in keep and name not in cfg._explicit:
            try:
                values[name] = by_name[name].check(value, "the saved config")
            except ConfigError:
                pass  # written by another version of this tool: the default stands
    changed = {}
    for name in sorted(cfg._explicit):
        if name in saved and name not in keep:
            try:
                before = by_name[name].check(saved[name], "the saved config")
            except ConfigError:
                continue
            if before != values[name]:
                changed[name] = (before, values[name])
    new = Config(**values)
    new._explicit = cfg._explicit  # is_set() still means "given now"
    return new, changed


def to_dict(cfg):
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_")}

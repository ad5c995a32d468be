"""Config files for ``taosr fit|validate|test|predict``: strict YAML loading and layered configs.

A method config may start with ``base: [_base/trainer.yaml, _base/rl.yaml]`` (paths relative to the
file). :func:`expand_config_args` replaces each ``--config FILE`` whose file (or one of its bases)
has a ``base:`` key by ``--config <YAML text>``: the bases merged in order, then the file itself.
Mappings merge key by key; a list or a scalar of a later file replaces the earlier one, which is
what a later ``--config`` does in LightningCLI (jsonargparse replaces ``trainer.callbacks`` whole), so
a file means the same whether it is a base or an overlay. Later ``--config`` files and ``--key value``
overrides still win. Every config file is read strictly first: a YAML syntax error or a key set twice
is a :class:`~taosr.errors.ConfigError` naming the file and line.

Paths of taosr's own files (``configs/...``, ``comparisons/...``, ``sweeps/...``) work from any
folder: :func:`locate` falls back to the checkout taosr is installed from when the current folder
has no such file (and says so once), so a user's runs can live in their own project folder.
"""
from __future__ import annotations

import copy
import os
import sys

import yaml

from taosr.errors import ConfigError

BASE_KEY = "base"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key set twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is set twice (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _mark(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def project_root() -> str | None:
    """The source checkout taosr is imported from (the folder holding ``configs/``), else None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return root if os.path.isdir(os.path.join(root, "configs")) else None


_NOTED: set[str] = set()
OWN_FOLDERS = ("configs", "comparisons", "sweeps", "notebooks")


def not_found(path: str, what: str) -> str:
    """``PATH: <what> not found``, saying why when it names one of taosr's own folders and taosr is not
    installed from its checkout (a wheel or ``pip install .`` carries the package, not those files)."""
    first = os.path.normpath(path).split(os.sep)[0]
    if project_root() is None and not os.path.isabs(path) and first in OWN_FOLDERS:
        return (f"{path}: {what} not found here, and taosr is not installed from its source checkout, which holds "
                f"its {first}/ (install with pip install -e <checkout>, or copy the file)")
    return f"{path}: {what} not found"


def locate(path: str) -> str:
    """``path`` when it exists; else, for a relative path that exists in taosr's checkout
    (:func:`project_root`: ``configs/sft.yaml``, ``comparisons/...``, ``sweeps/...``), that file, with
    a one-line notice on stderr the first time; else ``path`` unchanged (the caller's error names it)."""
    if not path or os.path.exists(path) or os.path.isabs(path):
        return path
    root = project_root()
    own = os.path.join(root, path) if root else None
    if own is None or not os.path.exists(own) or os.path.realpath(root) == os.path.realpath(os.getcwd()):
        return path
    if own not in _NOTED:
        _NOTED.add(own)
        print(f"taosr: {path} is not in the current folder; using taosr's own {own}", file=sys.stderr)
    return own


def load_yaml(path: str):
    """Parse one YAML file strictly; errors name ``file:line:column``."""
    if not os.path.exists(path):
        raise ConfigError(not_found(path, "config file"))
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a config file")
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason})") from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{_mark(err)}: YAML error: {problem}") from None


def merge(base, over):
    """``over`` merged into ``base``: mappings key by key, anything else replaced (a new object)."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def resolve_file(path: str, _stack: tuple[str, ...] = ()) -> tuple[dict, bool]:
    """The file's content with its bases merged in (``base`` removed); True when it had bases."""
    real = os.path.realpath(path)
    if real in _stack:
        raise ConfigError(f"{path}: 'base' includes itself ({' -> '.join([*_stack, real])})")
    data = load_yaml(path)
    if data is None:
        return {}, False
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got a {type(data).__name__}")
    if BASE_KEY not in data:
        return data, False
    bases = data.pop(BASE_KEY)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'base' must be a list of config paths relative to the file")
    merged: dict = {}
    for b in bases:
        bpath = os.path.join(os.path.dirname(path), b)
        if not os.path.exists(bpath) and not os.path.isabs(b):  # a copy of taosr's configs/sft.yaml, wherever
            own = locate(os.path.normpath(os.path.join("configs", b)))  # it is: the checkout's configs/_base/
            bpath = own if os.path.exists(own) else bpath
        if not os.path.exists(bpath):
            raise ConfigError(f"{path}: base config {b!r} not found ({bpath})")
        part, _ = resolve_file(bpath, (*_stack, real))
        merged = merge(merged, part)
    return merge(merged, data), True


def config_paths(argv: list[str]) -> list[str]:
    """The files given as ``--config FILE`` / ``--config=FILE`` (not YAML text)."""
    out = []
    for i, a in enumerate(argv):
        val = a.split("=", 1)[1] if a.startswith("--config=") else (argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
        if val is not None and "\n" not in val and not val.lstrip().startswith("{"):
            out.append(val)
    return out


def expand_config_args(argv: list[str]) -> list[str]:
    """Check every ``--config`` file strictly and expand layered ones into YAML text (see module doc)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" or a.startswith("--config="):
            if a == "--config":
                if i + 1 >= len(argv):
                    raise ConfigError("--config: expected a file")
                val, i = argv[i + 1], i + 2
            else:
                val, i = a.split("=", 1)[1], i + 1
            if "\n" in val or val.lstrip().startswith("{"):  # YAML text, as jsonargparse allows
                out += ["--config", val]
                continue
            val = locate(val)
            data, layered = resolve_file(val)
            out += ["--config", yaml.safe_dump(data, sort_keys=False) if layered else val]
            continue
        out.append(a)
        i += 1
    return out


def resolved_config(path: str) -> dict:
    """The merged content of one config file (what ``--config path`` means), for tests and tools."""
    return resolve_file(path)[0]


# ---------------------------------------------------------------------------- who set a key
# A setting that does nothing is refused only where the user gave it (the command line, YAML text, or a
# config file of their own), not where taosr's own configs/ set it for every method (taosr.setting_checks).
# A run's saved <run>/config.yaml holds every key; it lists the keys its run's user set, so a re-run of it
# means what the run meant.
USER_KEYS_MARK = "# taosr: keys set by the user:"
NOT_SETTINGS = frozenset({"config", "print_config", "help"})


def own_configs_dir() -> str | None:
    """The real path of taosr's own ``configs/`` (method configs, ``_base/``, ``experiment/`` overlays)."""
    root = project_root()
    return os.path.realpath(os.path.join(root, "configs")) if root else None


def is_own_config(path: str) -> bool:
    own = own_configs_dir()
    return own is not None and os.path.realpath(path).startswith(own + os.sep)


def normalize_key(key: str) -> str:
    """``--model.lr`` / ``model.lr`` -> ``model.init_args.lr`` (jsonargparse accepts both); ``+=`` dropped."""
    key = key.lstrip("-").rstrip("+")
    parts = key.split(".")
    if len(parts) > 1 and parts[0] == "model" and parts[1] not in ("class_path", "init_args", "dict_kwargs"):
        parts.insert(1, "init_args")
    return ".".join(parts)


def dotted_keys(node, prefix: str = "") -> set[str]:
    """The dotted leaf keys of a parsed YAML mapping (an empty mapping, a list or a scalar is a leaf)."""
    if isinstance(node, dict) and node:
        out: set[str] = set()
        for k, v in node.items():
            if prefix == "" and k == BASE_KEY:
                continue
            out |= dotted_keys(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {normalize_key(prefix)} if prefix else set()


def saved_user_keys(path: str) -> set[str] | None:
    """The keys a saved run config lists as its user's (:data:`USER_KEYS_MARK`), or None for another file."""
    keys, found = set(), False
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            if line.startswith(USER_KEYS_MARK):
                found = True
                keys |= {k.strip() for k in line[len(USER_KEYS_MARK):].split(",") if k.strip()}
    return keys if found else None


def user_mark(keys) -> str:
    """The comment lines of :data:`USER_KEYS_MARK` listing ``keys`` (at most ~100 characters a line)."""
    lines, line = [], []
    for k in sorted(keys):
        if line and len(", ".join([*line, k])) > 100:
            lines.append(line)
            line = []
        line.append(k)
    lines.append(line)
    return "".join(f"{USER_KEYS_MARK} {', '.join(ln)}\n" for ln in lines)


def file_user_keys(path: str, _stack: tuple[str, ...] = ()) -> set[str]:
    """The keys ``--config path`` sets that count as the user's: none of taosr's own ``configs/`` files
    (overlays under ``configs/experiment/`` included: a no-op key there is fixed in the file, not refused),
    the listed ones of a saved run config, every key of another file (its ``base:`` files by the same rule)."""
    if is_own_config(path):
        return set()
    listed = saved_user_keys(path)
    if listed is not None:
        return listed
    real = os.path.realpath(path)
    if real in _stack:  # resolve_file has refused the loop already
        return set()
    data = load_yaml(path)
    if not isinstance(data, dict):
        return set()
    keys = dotted_keys(data)
    bases = data.get(BASE_KEY) or []
    for b in [bases] if isinstance(bases, str) else bases:
        bpath = os.path.join(os.path.dirname(path), b)
        if not os.path.exists(bpath) and not os.path.isabs(b):  # as resolve_file finds it
            own = locate(os.path.normpath(os.path.join("configs", b)))
            bpath = own if os.path.exists(own) else bpath
        if os.path.exists(bpath):
            keys |= file_user_keys(bpath, (*_stack, real))
    return keys


def _yaml_mapping(text: str):
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return value if isinstance(value, dict) else None


def option_pairs(argv: list[str]):
    """``(--name, value)`` of each option of a command line, ``--name value`` or ``--name=value``;
    value None for a flag without one (the next token is an option, or there is none). Tokens that
    are neither (a subcommand) are skipped."""
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if not a.startswith("--"):
            continue
        name, eq, value = a.partition("=")
        if not eq:
            value = argv[i] if i < len(argv) and not argv[i].startswith("--") else None
            i += value is not None
        yield name, value


def user_set_keys(argv: list[str]) -> frozenset[str]:
    """The dotted keys (``model.init_args.grm_path``) the user set in a ``fit|validate|test|predict``
    command line: its ``--key value`` options (a mapping value by each of its keys), ``--config`` YAML
    text, and the keys of ``--config`` files by :func:`file_user_keys`. Call it on the arguments
    before :func:`expand_config_args` (a layered file's text no longer says where a key came from)."""
    out: set[str] = set()
    for name, value in option_pairs(argv):
        key = name[2:].rstrip("+")
        if key == "config" and value is not None:
            if "\n" in value or value.lstrip().startswith("{"):
                out |= dotted_keys(_yaml_mapping(value) or {})
            else:
                path = locate(value)
                if os.path.isfile(path):
                    out |= file_user_keys(path)
            continue
        if not key or key in NOT_SETTINGS or key.endswith(".help"):
            continue
        mapping = _yaml_mapping(value) if value is not None and value.lstrip().startswith("{") else None
        if mapping:
            out |= dotted_keys(mapping, normalize_key(key))
        else:  # `--model SRPOModule` names the class, it sets none of its options
            out.add("model.class_path" if normalize_key(key) == "model" else normalize_key(key))
    return frozenset(out)


def as_list(value) -> list:
    """A setting Lightning takes as one item or a list (``trainer.callbacks``, ``trainer.logger``) as a
    list (None: none)."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]

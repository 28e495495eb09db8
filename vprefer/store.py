"""The run directory: parquet tables, appended in parts, plus a provenance manifest.

Layout::

    RUN/
      manifest.json              provenance (never secrets)
      tables/<name>/base-<seq>.parquet   everything up to sequence number <seq>
      tables/<name>/part-<seq>.parquet   rows appended after the base
      images/                    image files copied in by ingest/import/generate
      journal/                   append-only logs of long jobs (annotation answers)
      state/                     small JSON state of long jobs (e.g. submitted batches)

Why bases and parts: a long job appends small parts as it goes (cheap, never
rewrites what is already on disk), and :meth:`Run.compact` folds them into a
new base. A reader takes the highest base and only the parts numbered above
it, so a crash at any point of a write or a compaction leaves a readable,
consistent table: a half-written temp file is never under a final name, and
parts already folded into a base are ignored until they are cleaned up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import polars as pl

from vprefer import __version__, schema
from vprefer.errors import DamagedError, MissingError
from vprefer.secrets import redact

_FILE = re.compile(r"^(base|part)-(\d{10})\.parquet$")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")
_TRACKED_PACKAGES = (
    "torch", "transformers", "diffusers", "peft", "trl", "accelerate", "openai",
    "polars", "bitsandbytes", "label-studio-sdk", "scikit-learn", "pillow",
)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_mode() -> int:
    """The mode ``open()`` would give under the umask: ``mkstemp`` makes 0600 whatever it is, and a run on shared
    storage must be readable as the user's other files are. Read from /proc: setting it to read it races."""
    try:
        with open("/proc/self/status") as f:
            return 0o666 & ~next(int(ln.split()[1], 8) for ln in f if ln.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o644


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, file_mode())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(redact(obj), indent=2, sort_keys=True, default=str).encode())


def _write_parquet_tmp(df: pl.DataFrame | pl.LazyFrame, folder: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=".write.", suffix=".tmp", dir=folder)
    os.fchmod(fd, file_mode())
    os.close(fd)
    try:
        if isinstance(df, pl.LazyFrame):
            df.sink_parquet(tmp)
        else:
            df.write_parquet(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Run:
    """A run directory. Cheap to construct; all I/O happens in the methods."""

    def __init__(self, path: str | Path, *, create: bool = False):
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
            if not self.manifest_path.exists():
                atomic_write_json(self.manifest_path, self._new_manifest())
        elif not self.manifest_path.exists():
            raise MissingError(
                f"{self.path} is not a vprefer run directory (no manifest.json); "
                "create one with `vprefer ingest`, `vprefer import` or `vprefer prompts sample`"
            )

    def __fspath__(self) -> str:
        """A Run is path-like, so every function that takes a run folder takes a Run as well."""
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ---------------------------------------------------------------- paths
    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def table_dir(self, name: str) -> Path:
        return self.path / "tables" / name

    def subdir(self, name: str) -> Path:
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def resolve_uri(self, uri: str) -> str | Path:
        """An image uri as stored: a URL is returned as is, a path relative to the run is made absolute."""
        if _URL.match(uri):
            return uri
        return self.path / uri

    def image_paths(self) -> pl.DataFrame:
        """Image rows with their prompt text and ``path``, the absolute file to open (a URL stays a URL).

        The one images -> prompts -> file join: reward data, ReFL, DPO, scoring, audits and exports all
        need it, and a path resolved once here cannot disagree between them. Images whose prompt is
        not in the run are left out (nothing could be asked about them).
        """
        root = self.path.resolve()
        imgs = self.read("images").join(self.read("prompts").select("prompt_id", "prompt"), on="prompt_id")
        paths = [u if _URL.match(u) else str(root / u) for u in imgs["uri"].to_list()]
        return imgs.with_columns(pl.Series("path", paths, dtype=pl.String))

    # ---------------------------------------------------------------- tables
    def _files(self, name: str) -> tuple[Path | None, int, list[tuple[int, Path]]]:
        d = self.table_dir(name)
        base, base_seq, parts = None, -1, []
        if d.exists():
            for p in d.iterdir():
                m = _FILE.match(p.name)
                if not m:
                    continue
                seq = int(m.group(2))
                if m.group(1) == "base" and seq > base_seq:
                    base, base_seq = p, seq
                elif m.group(1) == "part":
                    parts.append((seq, p))
        live = sorted((s, p) for s, p in parts if s > base_seq)
        return base, base_seq, live

    def _next_seq(self, name: str) -> int:
        d = self.table_dir(name)
        seqs = [int(m.group(2)) for p in d.iterdir() if (m := _FILE.match(p.name))] if d.exists() else []
        return max(seqs, default=-1) + 1

    def has(self, name: str) -> bool:
        base, _, parts = self._files(name)
        return base is not None or bool(parts)

    def scan(self, name: str) -> pl.LazyFrame:
        """Lazy view of a table (base + live parts), schema-checked on the first file."""
        base, _, parts = self._files(name)
        files = ([base] if base else []) + [p for _, p in parts]
        if not files:
            return schema.empty(name).lazy()
        frames = []
        for f in files:
            lf = pl.scan_parquet(f)
            try:
                found = lf.collect_schema()
            except pl.exceptions.PolarsError as e:
                raise damaged(f, name, e) from None
            bad = schema.problems(name, found)
            if bad:
                raise schema.SchemaError(f"{f}: table {name!r} does not match its schema: " + "; ".join(bad))
            frames.append(lf.select(list(schema.SCHEMAS[name])))
        return pl.concat(frames, how="vertical_relaxed")

    def read(self, name: str) -> pl.DataFrame:
        return schema.validate(name, self._collect(name, self.scan(name)), self.table_dir(name))

    def _collect(self, name: str, lf: pl.LazyFrame) -> pl.DataFrame:
        """``lf.collect()``; a damaged file found only when its pages are read is named (each file of the table
        is read again, on this rare path only, to find which)."""
        try:
            return lf.collect()
        except pl.exceptions.PolarsError as e:
            base, _, parts = self._files(name)
            for f in ([base] if base else []) + [p for _, p in parts]:
                try:
                    pl.read_parquet(f)
                except pl.exceptions.PolarsError as e2:
                    raise damaged(f, name, e2) from None
            raise damaged(self.table_dir(name), name, e) from None

    def read_or_empty(self, name: str) -> pl.DataFrame:
        """The table, or an empty frame with the table's schema when it was never written.

        Says at the call site that an absent table is expected (a first run), so no caller
        needs its own ``has`` check and typed empty frame.
        """
        return self.read(name) if self.has(name) else schema.empty(name)

    def write(self, name: str, df: pl.DataFrame) -> None:
        """Replace the whole table (atomically: old or new, never a mix)."""
        df = schema.validate(name, df)
        d = self.table_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        tmp = _write_parquet_tmp(df, d)
        seq = self._next_seq(name)
        os.replace(tmp, d / f"base-{seq:010d}.parquet")
        fsync_dir(d)
        self._cleanup(name)

    def append(self, name: str, df: pl.DataFrame) -> None:
        """Add rows as a new part. Safe against concurrent appenders (names are claimed with link())."""
        df = schema.validate(name, df)
        if df.height == 0:
            return
        d = self.table_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        tmp = _write_parquet_tmp(df, d)
        try:
            while True:
                target = d / f"part-{self._next_seq(name):010d}.parquet"
                try:
                    os.link(tmp, target)
                    break
                except FileExistsError:
                    continue
        finally:
            os.unlink(tmp)
        fsync_dir(d)

    def replace_rows(self, name: str, frame: pl.DataFrame, key: str | Sequence[str], *,
                     replacing: Iterable | pl.DataFrame | None = None) -> None:
        """Replace the rows whose ``key`` matches and keep the rest, in one atomic :meth:`write`.

        This is how one producer re-publishes its slice of a shared table (a judge's rankings,
        a model's scores, Label Studio's tasks) without touching anyone else's rows. The slice
        is the key values found in ``frame``, or exactly ``replacing`` (values of a single key,
        or a frame of key columns) when rows may vanish, e.g. every human row when people's
        judgements are pulled again. A crash leaves the old table or the new one, never a mix.
        """
        keys = [key] if isinstance(key, str) else list(key)
        cols = list(schema.SCHEMAS[name])
        frame = schema.validate(name, frame).select(cols)
        if replacing is None:
            drop = frame.select(keys).unique()
        elif isinstance(replacing, pl.DataFrame):
            drop = replacing.select(keys).unique()
        else:
            if len(keys) != 1:
                raise TypeError("replacing= as a list of values needs a single key column")
            drop = pl.DataFrame({keys[0]: list(replacing)}, schema={keys[0]: schema.SCHEMAS[name][keys[0]]})
        old = self.read_or_empty(name).select(cols)
        keep = old.with_row_index("_row").join(drop, on=keys, how="anti").sort("_row").drop("_row")
        self.write(name, pl.concat([keep, frame], how="vertical_relaxed"))

    def part_count(self, name: str) -> int:
        """Live parts not yet folded into the base (each append adds one)."""
        return len(self._files(name)[2])

    def compact(self, name: str, *, dedupe: bool = True) -> None:
        """Fold live parts into a new base; with ``dedupe`` keep the last row per natural key."""
        base, _, parts = self._files(name)
        if not parts:
            return
        d = self.table_dir(name)
        if dedupe:
            df = self.read(name).unique(subset=list(schema.KEYS[name]), keep="last", maintain_order=True)
            tmp = _write_parquet_tmp(df, d)
        else:  # streamed file to file: a 16M-row annotations table never sits in memory whole
            tmp = _write_parquet_tmp(self.scan(name), d)
        os.replace(tmp, d / f"base-{parts[-1][0]:010d}.parquet")
        fsync_dir(d)
        self._cleanup(name)

    def _cleanup(self, name: str) -> None:
        """Delete superseded bases/parts and stale temp files (only ever files nobody reads)."""
        d = self.table_dir(name)
        base, base_seq, _ = self._files(name)
        for p in d.iterdir():
            m = _FILE.match(p.name)
            stale_tmp = p.name.startswith(".write.") and time.time() - p.stat().st_mtime > 3600
            if (m and int(m.group(2)) <= base_seq and p != base) or stale_tmp:
                with contextlib.suppress(OSError):
                    p.unlink()

    def counts(self) -> dict[str, int]:
        out = {}
        tables = self.path / "tables"
        if tables.exists():
            for d in sorted(tables.iterdir()):
                if d.is_dir() and d.name in schema.SCHEMAS:
                    out[d.name] = self._collect(d.name, self.scan(d.name).select(pl.len())).item()
        return out

    # ---------------------------------------------------------------- manifest
    def _new_manifest(self) -> dict:
        return {"vprefer": __version__, "created": now(), "commands": [], "annotators": {}}

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    def update_manifest(self, **fields: Any) -> dict:
        m = self.manifest()
        m.update(fields)
        m["updated"] = now()
        atomic_write_json(self.manifest_path, m)
        return m

    @contextlib.contextmanager
    def command(self, name: str, recipe: dict | None = None) -> Iterator[dict]:
        """Record one command in the manifest: argv, resolved recipe, versions, times, outcome, counts.

        The yielded dict can be filled with extra facts (cost, counts) by the job.
        """
        entry: dict[str, Any] = {
            "command": name,
            "argv": list(sys.argv),
            "started": now(),
            "recipe": recipe,
            "versions": package_versions(),
        }
        try:
            yield entry
            entry["status"] = "ok"
        except BaseException as e:
            entry["status"] = f"failed: {type(e).__name__}: {e}"
            raise
        finally:
            entry["finished"] = now()
            m = self.manifest()
            m.setdefault("commands", []).append(entry)
            m["counts"] = self.counts()
            m["updated"] = now()
            atomic_write_json(self.manifest_path, m)


class Result:
    """Base of the dataclasses the API returns instead of dicts.

    ``result["field"]`` and ``result.get("field")`` still work, so code written against the
    dict results keeps running; new code uses attributes.
    """

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in dataclasses.fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def damaged(f: Path, table: str, e: Exception) -> DamagedError:
    why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    return DamagedError(f"{f}: table {table!r} cannot be read ({why}); the file is damaged (an interrupted copy, "
                        "a full disk?): restore it from a backup, or move it aside and rerun the command that "
                        "wrote the table (manifest.json lists them)")


def is_url(uri: str) -> bool:
    """An image uri that names a server's file (kept as is) rather than a file in the run."""
    return bool(_URL.match(uri))


def as_run(run: Run | str | os.PathLike, *, create: bool = False) -> Run:
    """The API takes a run as a :class:`Run` or as its folder; this is the one place that tells them apart."""
    return run if isinstance(run, Run) else Run(run, create=create)


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "vprefer": __version__}
    for pkg in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out

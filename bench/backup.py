"""Benchmark: backing up and restoring a live local model, against rebuilding it.

    python bench/backup.py --products 1000000 [--dim 512] [--work DIR] [--keep]

1. Rebuild (the baseline): N synthetic products written through ``LocalStore.upsert`` and the index built,
   tuned and saved - ``bench/scale.py``'s build step, in its own process. It is a lower bound of a real
   rebuild, which would also download and embed every product's images.
2. Backup (ours): ``pipeline.backup.backup_model`` in its own process while another process keeps committing
   one-product upserts to the same catalogue, as the API's edits do; the writer's commit latency during the
   backup is reported, and the backup's generation must lie strictly inside the writes' generations.
3. Restore: ``pipeline.restore.restore_backup`` of that backup as a new model, checked against the manifest.

Each step runs in its own process, so its time and peak RSS (ru_maxrss) are its own. Prints a table and ends
with one JSON line. The work folder is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MODEL = "scale"

from bench._backup_steps import during  # noqa: E402


def _run(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-backup-"))
    root = work / "root"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("IMAGESEARCH_")}, "PYTHONPATH": str(REPO)}
    step = ["-m", "bench._backup_steps", "--root", str(root), "--model", MODEL]
    try:
        print(f"rebuild: {args.products} products x {args.dim} through the store, then the index", file=sys.stderr)
        build = _run(["-m", "bench._scale_store", "build", "--root", str(root), "--model", MODEL,
                      "--products", str(args.products), "--dim", str(args.dim)], env)
        stop = work / "stop-writing"
        writer = subprocess.Popen([sys.executable, *step, "write", "--stop", str(stop), "--dim", str(args.dim)],
                                  env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
        while not (work / "stop-writing.ready").exists():  # the writer has committed its first writes
            time.sleep(0.1)
        time.sleep(5)  # a few seconds of writes without a backup: the baseline of their latency
        print("backup: while a writer commits one-product upserts", file=sys.stderr)
        backup = _run([*step, "backup", "--out", str(work / "backups")], env)
        stop.touch()
        out, _ = writer.communicate(timeout=600)
        writes = during(json.loads(out.strip().splitlines()[-1])["writes"], backup["began"], backup["ended"])
        print("restore: the backup as a new model", file=sys.stderr)
        restore = _run([*step, "restore", "--backup", backup["path"], "--as", f"{MODEL}_restored"], env)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    consistent = writes["first_generation"] < backup["generation"] < writes["last_generation"]
    result = {"products": args.products, "dim": args.dim, "rebuild_s": build["build_s"],
              "rebuild_peak_rss_mb": build["build_peak_rss_mb"], "db_bytes": build["db_bytes"],
              "index_bytes": build["index_bytes"], "backup_s": backup["seconds"], "backup_bytes": backup["bytes"],
              "backup_peak_rss_mb": backup["peak_rss_mb"], "restore_s": restore["seconds"],
              "restore_peak_rss_mb": restore["peak_rss_mb"], "backup_vs_rebuild": round(backup["seconds"] /
                                                                                         build["build_s"], 4),
              "restore_vs_rebuild": round(restore["seconds"] / build["build_s"], 4),
              "writes_during_backup": writes["during"], "write_p50_ms": writes["p50_ms"],
              "write_p99_ms": writes["p99_ms"], "writes_before_backup": writes["before"],
              "write_before_p50_ms": writes["before_p50_ms"], "write_before_p99_ms": writes["before_p99_ms"],
              "backup_generation_inside_writes": consistent,
              "restored_products": restore["products"], "load_average": os.getloadavg()}
    rows = [("rebuild from stored vectors (write + index)", f"{build['build_s']:.1f} s",
             f"{build['build_peak_rss_mb']:.0f} MB"),
            ("backup while writing", f"{backup['seconds']:.1f} s", f"{backup['peak_rss_mb']:.0f} MB"),
            ("restore as a new model", f"{restore['seconds']:.1f} s", f"{restore['peak_rss_mb']:.0f} MB")]
    for name, seconds, rss in rows:
        print(f"{name:<45} {seconds:>10} {rss:>10}")
    print(f"backup / rebuild {result['backup_vs_rebuild']:.3f}, restore / rebuild {result['restore_vs_rebuild']:.3f}; "
          f"{writes['during']} one-product writes committed during the backup (p50 {writes['p50_ms']} ms, p99 "
          f"{writes['p99_ms']} ms; before it, {writes['before']} writes: p50 {writes['before_p50_ms']} ms, p99 "
          f"{writes['before_p99_ms']} ms); backup generation inside them: {consistent}")
    print(json.dumps(result))
    return 0 if consistent and restore["products"] == backup["products"] else 1


if __name__ == "__main__":
    sys.exit(main())

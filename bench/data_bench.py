"""Images/second of pneumo's Ray Data decoding pipeline against a plain torch DataLoader, and of the
pipeline reading pneumo's decoded-image cache, on the synthetic JPEG folder, in one run.

    python -m bench.data_bench                      # 2,000 films of 256 px -> 224 px, 2 passes each
    python -m bench.data_bench --n 4000 --film-size 512 --image-size 224 --workers 2

All pipelines read the same files and decode them with the same function (`load_image`: file bytes,
SHA-1, PIL decode, resize to the model's size) into the same uint8 batches of 64, with the same
number of CPU workers: DataLoader(num_workers=W) against Ray Data map tasks that each take one of W
Ray CPUs. The table goes to stdout and bench/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "data.json"
BATCH = 64


class DecodedFiles(torch.utils.data.Dataset):
    """The DataLoader baseline: one record -> (decoded image, label)."""

    def __init__(self, records, preprocessing):
        self.records, self.preprocessing = records, preprocessing

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        from pneumo.data.sources import load_image

        record = self.records[index]
        image, _ = load_image(record.path, self.preprocessing, 40_000_000)
        return torch.from_numpy(image), record.label


def timed_passes(make_batches, passes: int) -> list[tuple[float, int]]:
    """(seconds, images) of each full pass over a fresh iterator."""
    results = []
    for _ in range(passes):
        started, images = time.perf_counter(), 0
        for batch in make_batches():
            images += len(batch)
        results.append((time.perf_counter() - started, images))
    return results


def run(n: int, film_size: int, image_size: int, workers: int, passes: int) -> list[dict]:
    import ray

    from pneumo.config import DataConfig
    from pneumo.data.cache import cache_key, read_cached
    from pneumo.data.dataset import decode_order, decode_records, prepare_data
    from pneumo.data.sources import list_source
    from pneumo.data.synthetic import generate_chest_xrays
    from pneumo.data.transforms import Preprocessing

    work = Path(tempfile.mkdtemp(prefix="pneumo-data-bench-"))
    root = work / "chest_xray"
    generate_chest_xrays(root, n_images=n, image_size=film_size, seed=0)
    preprocessing = Preprocessing(in_chans=1, image_size=image_size, mean=(0.5,), std=(0.25,))
    cfg = DataConfig(path=str(root), cache_dir=str(work / "cache"), resplit_val=False)
    records = list_source(cfg).records

    loader = lambda: (images for images, _ in torch.utils.data.DataLoader(
        DecodedFiles(records, preprocessing), batch_size=BATCH, num_workers=workers, persistent_workers=False))
    rows = [("DataLoader", f"num_workers={workers}", timed_passes(loader, passes))]

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only, as `pneumo run` does
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING")
    ray_data = lambda: (b["image"] for b in decode_records(records, preprocessing, 40_000_000, cpus_per_task=1)
                        .iter_batches(batch_size=BATCH, batch_format="numpy"))
    rows.append(("Ray Data", f"{workers} tasks x 1 CPU, streaming", timed_passes(ray_data, passes)))

    prepare_data(cfg, preprocessing)  # writes the cache entry
    entry = cache_key(decode_order(records, cfg.split_seed), preprocessing, 40_000_000)
    cached = lambda: (b["image"] for b in read_cached(cfg.cache_dir, entry).iter_batches(
        batch_size=BATCH, batch_format="numpy"))
    rows.append(("Ray Data + cache", "decoded .npz shards", timed_passes(cached, passes)))
    ray.shutdown()

    table = []
    for name, setting, measured in rows:
        steady_s, images = measured[-1]
        table.append({"pipeline": name, "setting": setting, "images": images,
                      "first_pass_images_per_s": round(measured[0][1] / measured[0][0], 1),
                      "steady_images_per_s": round(images / steady_s, 1)})
    baseline = table[0]["steady_images_per_s"]
    for row in table:
        row["ratio_to_dataloader"] = round(row["steady_images_per_s"] / baseline, 2)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="synthetic films")
    parser.add_argument("--film-size", type=int, default=256, help="side of the JPEG files, px")
    parser.add_argument("--image-size", type=int, default=224, help="side the pipelines resize to, px")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers = Ray CPUs for map tasks")
    parser.add_argument("--passes", type=int, default=2, help="passes per pipeline; the last one is reported")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    table = run(args.n, args.film_size, args.image_size, args.workers, args.passes)
    print(f"\n{args.n} films {args.film_size} px -> {args.image_size} px, batches of {BATCH}, "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| pipeline | setting | first pass img/s | steady img/s | ratio to DataLoader |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in table:
        print(f"| {row['pipeline']} | {row['setting']} | {row['first_pass_images_per_s']} | "
              f"{row['steady_images_per_s']} | {row['ratio_to_dataloader']} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": vars(args), "rows": table}, indent=2))


if __name__ == "__main__":
    main()

"""Synthetic-data figures: generator speed and the raw-pixel retrieval baseline.

    python -m benchmarks.synth_figures [--ids 200] [--images-per-id 16] [--cams 6] [--seed 0]
                                       [--workers N] [--out /tmp/reidkit_synth_bench]

Generates the set (always regenerated, so the speed is measured), loads it through the
Market-1501 loader, takes raw pixels (64x32, flattened, L2-normalised) with Euclidean
distance and reports mAP / rank-1 next to a random ranking, so a trained model's numbers can
be read against both. Writes benchmarks/results/synth.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

# Market-1501 as the target size: 1,501 ids, ~32.7k images in all (incl. distractors/junk).
MARKET_IDS, MARKET_IMAGES_PER_ID = 1501, 21


def raw_pixel_features(paths: list[str], size: tuple[int, int] = (64, 32)) -> np.ndarray:
    """Resize to (H, W), flatten, L2-normalise: the no-learning baseline descriptor."""
    from PIL import Image

    feats = np.empty((len(paths), size[0] * size[1] * 3), dtype=np.float32)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            feats[i] = np.asarray(
                im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32
            ).ravel()
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12
    return feats


def euclidean(qf: np.ndarray, gf: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances (rows: queries)."""
    d2 = (qf * qf).sum(1)[:, None] + (gf * gf).sum(1)[None, :] - 2.0 * qf @ gf.T
    return np.sqrt(np.maximum(d2, 0.0))


def _wait_for(module: str, attempts: int, delay: float):
    """Import a module written concurrently by others, retrying for a while."""
    import importlib

    for i in range(attempts):
        try:
            return importlib.import_module(module)
        except ImportError:
            if i == attempts - 1:
                raise
            time.sleep(delay)
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the measurement, print it and write benchmarks/results/synth.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=200)
    ap.add_argument("--images-per-id", type=int, default=16)
    ap.add_argument("--cams", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domain", default="A", choices=["A", "B"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "reidkit_synth_bench"))
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)

    from reidkit.data.synthetic import generate_report

    load_avg_before = os.getloadavg()[0]
    rep = generate_report(
        args.out,
        ids=args.ids,
        images_per_id=args.images_per_id,
        cams=args.cams,
        seed=args.seed,
        domain=args.domain,
        workers=args.workers,
        force=True,
    )
    market_images = round(rep.counts["images"] / (args.ids * args.images_per_id) * MARKET_IDS * MARKET_IMAGES_PER_ID)
    speed = {
        "images": rep.counts["images"],
        "seconds": round(rep.seconds, 2),
        "images_per_s": round(rep.images_per_s, 1),
        "workers": rep.workers,
        "load_avg_1m_before": round(load_avg_before, 2),
        "extrapolated_market1501": {
            "ids": MARKET_IDS,
            "images_per_id": MARKET_IMAGES_PER_ID,
            "images": market_images,
            "seconds": round(market_images / rep.images_per_s, 1),
            "note": "extrapolated linearly from the measured images/s on this set, not measured",
        },
    }
    print(
        f"generated {rep.counts['images']} images in {rep.seconds:.1f} s = {rep.images_per_s:.1f} images/s "
        f"({rep.workers} workers, load avg before {load_avg_before:.1f}); Market1501-sized "
        f"({market_images} images) -> ~{market_images / rep.images_per_s / 60:.1f} min (extrapolated)"
    )

    datasets = _wait_for("reidkit.data.datasets", attempts=10, delay=30)
    metrics = _wait_for("reidkit.evaluation.metrics", attempts=10, delay=30)
    ds = datasets.load_dataset("market1501", args.out)
    q, g = ds.query, ds.gallery
    t0 = time.perf_counter()
    qf = raw_pixel_features([r.path for r in q])
    gf = raw_pixel_features([r.path for r in g])
    dist = euclidean(qf, gf)
    q_pids, g_pids = np.array([r.pid for r in q]), np.array([r.pid for r in g])
    q_cams, g_cams = np.array([r.camid for r in q]), np.array([r.camid for r in g])
    res = metrics.evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    rnd = metrics.evaluate_rank(np.random.default_rng(0).random(dist.shape), q_pids, g_pids, q_cams, g_cams)
    eval_s = time.perf_counter() - t0
    raw = {
        "mAP": float(res["mAP"]),
        "rank1": float(res["cmc"][0]),
        "rank5": float(res["cmc"][4]),
        "mINP": float(res["mINP"]),
        "num_valid_queries": int(res["num_valid"]),
        "random_mAP": float(rnd["mAP"]),
        "random_rank1": float(rnd["cmc"][0]),
        "descriptor": "RGB resized to 64x32, flattened, L2-normalised; Euclidean distance",
        "queries": len(q),
        "gallery": len(g),
        "seconds": round(eval_s, 2),
    }
    print(
        f"raw pixels: mAP {raw['mAP']:.2%} rank-1 {raw['rank1']:.2%} (random ranking: mAP "
        f"{raw['random_mAP']:.2%} rank-1 {raw['random_rank1']:.2%}); {len(q)} queries, {len(g)} gallery"
    )

    payload = {
        "params": rep.params,
        "counts": rep.counts,
        "speed": speed,
        "raw_pixel": raw,
        "platform": {
            "system": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
        "command": "python -m benchmarks.synth_figures " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if not args.no_write:
        from benchmarks.common import write_result

        print(f"wrote {write_result('synth', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

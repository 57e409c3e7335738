"""The baseline pneumo serve replaces: one uvicorn process, the model called once per request.

    python -m bench.plain_server --checkpoint results/…/best_model --port 8100 [--torch-threads 1] [--runtime openvino]

Same checkpoint, same decoding, the same runtime (pneumo.models.runtimes; PyTorch fp32 eager by default)
and (from serve_bench) the same thread count as a Serve replica, so the benchmark compares only the
serving design: no batching, one event loop, inference inline.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request

from pneumo.data.transforms import decode_image
from pneumo.models.checkpoints import load_checkpoint
from pneumo.models.runtimes import RUNTIMES, create_predictor


def create_app(checkpoint: Path, runtime: str = "torch", threads: int = 1) -> FastAPI:
    loaded = load_checkpoint(checkpoint)
    spec = loaded.meta.preprocessing_spec
    predictor = create_predictor(loaded, runtime, threads)
    app = FastAPI(title="pneumo plain baseline")

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        started = time.perf_counter()
        image = np.stack([decode_image(await request.body(), spec)])
        probability = float(loaded.meta.calibration.probabilities(predictor.logits(image))[0])
        label = "PNEUMONIA" if probability >= loaded.meta.decision_threshold else "NORMAL"
        return {"probability": probability, "label": label, "time_ms": 1000 * (time.perf_counter() - started)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--torch-threads", type=int, default=torch.get_num_threads(), help="intra-op threads")
    parser.add_argument("--runtime", default="torch", choices=RUNTIMES)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.checkpoint, args.runtime, args.torch_threads),
        host=args.host,
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()

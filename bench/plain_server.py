"""The baseline pneumo serve replaces: one uvicorn process, the model called once per request.

    python -m bench.plain_server --checkpoint results/…/best_model --port 8100 [--torch-threads 1]

Same checkpoint, same decoding, the same `predict_probabilities` and (from serve_bench) the same
torch thread count as a Serve replica, so the benchmark compares only the serving design: no
batching, one event loop, inference inline.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request

from pneumo.checkpoints import load_checkpoint
from pneumo.data.transforms import decode_image
from pneumo.evaluation.prediction import predict_probabilities


def create_app(checkpoint: Path) -> FastAPI:
    loaded = load_checkpoint(checkpoint)
    spec = loaded.meta.preprocessing_spec
    app = FastAPI(title="pneumo plain baseline")

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        started = time.perf_counter()
        image = torch.from_numpy(np.stack([decode_image(await request.body(), spec)]))
        probability = float(predict_probabilities(loaded, image)[0])
        label = "PNEUMONIA" if probability >= loaded.meta.decision_threshold else "NORMAL"
        return {"probability": probability, "label": label, "time_ms": 1000 * (time.perf_counter() - started)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--torch-threads", type=int, help="intra-op threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    uvicorn.run(create_app(args.checkpoint), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

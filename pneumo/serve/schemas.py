"""The endpoint's JSON answers, as pydantic models: they are its OpenAPI schema."""

from typing import Literal, Optional, Union

from pydantic import BaseModel, Field

from pneumo.data.folder import CLASS_NAMES
from pneumo.monitoring.ood import VAL_QUANTILE

Label = Literal[CLASS_NAMES]  # type: ignore[valid-type]


class Prediction(BaseModel):
    probability: float = Field(description="P(pneumonia) from the model")
    label: Label = Field(description="PNEUMONIA when probability >= threshold")
    threshold: float = Field(description="the model's decision threshold, chosen on validation")
    model_name: str
    model_version: str = Field(description="the version that produced this answer (also the X-Model-Version header)")
    model_role: str = Field(description="champion or challenger: the registry alias that version is served as")
    time_ms: float = Field(description="time spent in the server, milliseconds")
    in_distribution: Optional[bool] = Field(
        None,
        description="false: the image does not look like the films the "
        "model was trained on (serve.ood_policy flag); null: "
        "the gate is off (see /readyz)",
    )
    ood_score: Optional[float] = Field(
        None, description="out-of-distribution score; above the model's cut-off (/model) means out of distribution"
    )


class FilePrediction(BaseModel):
    filename: Optional[str]
    probability: Optional[float] = Field(description="null when the gate refused the file (serve.ood_policy reject)")
    label: Optional[Label]
    in_distribution: Optional[bool] = None
    ood_score: Optional[float] = None
    error: Optional[str] = Field(None, description="why the file was not scored")


class BatchPrediction(BaseModel):
    predictions: list[FilePrediction] = Field(description="one per `files` part, in order")
    threshold: float
    model_name: str
    model_version: str
    model_role: str
    time_ms: float


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong and how to fix it")
    field: Optional[str] = Field(description="the request field at fault: file, files, body, content-type, model")


class OutOfDistributionBody(ErrorBody):
    ood_score: float = Field(description="the image's out-of-distribution score")
    ood_cutoff: float = Field(
        description=f"the model's cut-off, fitted on validation films (~{1 - VAL_QUANTILE:.0%} of them beyond it)"
    )


ERROR_DOCS = {status: {"model": ErrorBody} for status in (400, 404, 413, 415, 503)}  # 404: unknown version
ERROR_DOCS[422] = {
    "model": Union[OutOfDistributionBody, ErrorBody],
    "description": "not a frontal chest film (serve.ood_policy reject: with its score), "
    "or more `files` than the schema's maxItems",
}

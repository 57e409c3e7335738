"""The endpoint's JSON answers, as pydantic models: they are its OpenAPI schema."""

from typing import Literal, Optional

from pydantic import BaseModel, Field

from pneumo.data.folder import CLASS_NAMES

Label = Literal[CLASS_NAMES]  # type: ignore[valid-type]


class Prediction(BaseModel):
    probability: float = Field(description="P(pneumonia) from the model")
    label: Label = Field(description="PNEUMONIA when probability >= threshold")
    threshold: float = Field(description="the model's decision threshold, chosen on validation")
    model_name: str
    model_version: str
    time_ms: float = Field(description="time spent in the server, milliseconds")


class FilePrediction(BaseModel):
    filename: Optional[str]
    probability: float
    label: Label


class BatchPrediction(BaseModel):
    predictions: list[FilePrediction] = Field(description="one per `files` part, in order")
    threshold: float
    model_name: str
    model_version: str
    time_ms: float


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong and how to fix it")
    field: Optional[str] = Field(description="the request field at fault: file, files, body, content-type, model")


ERROR_DOCS = {status: {"model": ErrorBody} for status in (400, 413, 415, 503)}

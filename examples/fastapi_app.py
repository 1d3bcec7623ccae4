"""FastAPI app that hands work to Celery, and runs it inline when the broker is down.

    uvicorn examples.fastapi_app:app --port 8000
    celery -A csuite_async_obs.worker worker   # with CELERY_IMPORTS=examples.tasks

``POST /process`` with ``{"values": [1, 2, 3]}`` answers ``{"task_id", "status": "started"}``,
or ``{"result": ...}`` computed inline when the broker cannot take the task.
``GET /task/{task_id}`` answers the task's status dict, or 404 for an unknown id.
``GET /metrics`` serves the publish-side metrics (celery_task_sent_total).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from csuite_async_obs import delay_task, get_task_result, metrics_asgi_app

from .tasks import analyse_metrics

app = FastAPI(title="C-Suite async example")
app.mount("/metrics", metrics_asgi_app())


class ProcessRequest(BaseModel):
    values: list[float] = Field(default_factory=list)


@app.post("/process")
def process(request: ProcessRequest) -> dict[str, Any]:
    result = delay_task(analyse_metrics, request.values)
    if result is None:
        # Broker down: do the work in this request rather than fail it.
        return {"result": analyse_metrics(request.values), "status": "completed_inline"}
    return {"task_id": result.id, "status": "started"}


@app.get("/task/{task_id}")
def task_status(task_id: str) -> dict[str, Any]:
    status = get_task_result(task_id)
    if status is None:
        raise HTTPException(
            status_code=404, detail={"error": "unknown task id", "task_id": task_id}
        )
    return status

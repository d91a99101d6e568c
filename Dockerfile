# CPU image for the API, the UI and the pipeline CLIs. Not built in this repository's CI (no container engine
# there); the pins are requirements.txt's, so it installs what the tests run against.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    IMAGESEARCH_ROOT=/app
WORKDIR /app

COPY requirements.txt requirements-scale.txt ./
# TORCH_INDEX_URL: PyTorch's CPU wheel index, which serves torch==2.13.0's CPU wheel (without it, the
# default index's torch pulls multi-GB CUDA wheels). Pass it with --build-arg or compose's build args.
ARG TORCH_INDEX_URL=""
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r requirements.txt

# SCALE=1 adds the optional Milvus and Ray packages (compose.yaml's `milvus` profile needs them).
ARG SCALE=0
RUN if [ "$SCALE" = "1" ]; then pip install -r requirements-scale.txt; fi

COPY core/ core/
COPY pipeline/ pipeline/
COPY training/ training/
COPY api/ api/
COPY ui/ ui/
COPY utils/ utils/
COPY run_api.py run_pipeline.py run_streamlit.py run_training.py ./

# data/, models/, checkpoints/ and logs/ are volumes (see compose.yaml): catalogues and indexes outlive the image.
EXPOSE 8000 8501
CMD ["python", "run_api.py", "--host", "0.0.0.0", "--port", "8000"]

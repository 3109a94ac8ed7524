# qdeploy runtime image: CUDA + TensorRT base, qdeploy with its GPU extras, non-root user.
# First version (foundation): runs the offline adaptation demo. The serving issue makes
# `qdeploy serve` the default command and adds the health check.
FROM nvcr.io/nvidia/tensorrt:25.10-py3

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/qdeploy
COPY pyproject.toml README.md constraints.txt ./
COPY qdeploy ./qdeploy
COPY plugins ./plugins
RUN python3 -m pip install --no-cache-dir ".[tensorrt]"

RUN useradd --create-home --uid 10001 qdeploy && mkdir -p /work/export && chown -R qdeploy /work
USER qdeploy
WORKDIR /work

ENTRYPOINT ["qdeploy"]
CMD ["demo", "--out", "/work/export/demo"]

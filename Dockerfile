# qdeploy serving image: CUDA + TensorRT base, qdeploy with its GPU extras, the TensorRT
# plugin library built from plugins/, and `qdeploy serve` as a non-root user with a health check.
#
#   docker build -t qdeploy .
#   docker run --gpus all -p 8000:8000 -v "$PWD/models:/models:ro" qdeploy
#
# /models is a model repository as `qdeploy triton-repo` writes it (the README's "Serving").
FROM nvcr.io/nvidia/tensorrt:25.10-py3

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/qdeploy
COPY pyproject.toml README.md constraints.txt ./
COPY qdeploy ./qdeploy
COPY plugins ./plugins

# Versions come from pyproject.toml and constraints.txt, not from this line.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir -c constraints.txt ".[tensorrt]" "cmake==4.4.4"

# The TensorRT plugin library: plugins/CMakeLists.txt builds one shared library, installed in
# /opt/qdeploy/lib. Fail loudly without the sources: an image whose plans cannot load their
# plugin must not be built.
RUN set -e; \
    if [ ! -f plugins/CMakeLists.txt ]; then \
        echo "plugins/CMakeLists.txt is missing: the TensorRT plugin sources must be in plugins/" >&2; exit 1; \
    fi; \
    cmake -S plugins -B /tmp/plugins-build -DCMAKE_BUILD_TYPE=Release; \
    cmake --build /tmp/plugins-build --parallel; \
    mkdir -p /opt/qdeploy/lib; \
    find /tmp/plugins-build -name "*.so" -type f -exec cp {} /opt/qdeploy/lib/ \; ; \
    if [ -z "$(find /opt/qdeploy/lib -name '*.so')" ]; then \
        echo "the plugin build produced no shared library" >&2; exit 1; \
    fi; \
    rm -rf /tmp/plugins-build

RUN useradd --create-home --uid 10001 qdeploy && mkdir -p /models
USER 10001
WORKDIR /home/qdeploy

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]

# 0.0.0.0: inside a container the published port is the boundary. The graceful timeout stays
# under `docker stop`'s default 10 s so in-flight requests finish before SIGKILL.
ENTRYPOINT ["qdeploy"]
CMD ["serve", "--repo", "/models", "--host", "0.0.0.0", "--port", "8000", "--graceful-timeout", "8"]

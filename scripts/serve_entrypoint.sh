#!/bin/sh
# ENTRYPOINT of the serving image. It takes TF Serving's command line, as the
# official tensorflow/serving image does (`--port=8500 --rest_api_port=8501
# --model_config_file=...`), or vispipe's own `serve ...` verb line.
if [ "${1:-}" = serve ]; then
    exec vispipe "$@"
fi
exec python -m vispipe.serving "$@"

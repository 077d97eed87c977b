"""fm_serve: an FM and its recall indexes over HTTP/JSON (the optional extra ``streamfm[serve]``).

- ``app.create_app``: the ASGI application (starlette): /v1/score, /v1/recall,
  /healthz, /metrics;
- ``state``: the served set (model + indexes), its checks and hot reload;
- ``scoring``, ``search``: a request's samples or query through the numba kernels;
- ``records``: raw records through fm_sample's featurizer (``fm_serve --spec``);
- ``metrics``: Prometheus text;
- ``cli.fm_serve``: the command (uvicorn, worker processes, SIGHUP).
"""

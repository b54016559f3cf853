"""`kiln serve`: engines behind the KServe v2 protocol that Triton Inference Server speaks
(HTTP and gRPC), with dynamic batching and Triton's metrics.

| module | job |
|---|---|
| `proto/` | Triton's grpc_service.proto and model_config.proto, and the messages built from them |
| `model_config.py` | config.pbtxt: read, completed from the engine, checked, turned into settings |
| `repository.py` | the model repository (Triton's layout): versions, load, unload, index |
| `model.py` | one loaded model version: request checks, the batcher, statistics |
| `batcher.py` | the queue and the instance threads that batch requests and run the engine |
| `stats.py` | the counters behind the statistics extension and the metrics |
| `service.py` | what both protocols share: readiness, requests in flight, the inference path |
| `http_codec.py`, `http_api.py` | KServe v2 over HTTP (aiohttp), JSON and binary tensors |
| `grpc_codec.py`, `grpc_api.py` | KServe v2 over gRPC (grpc.aio) |
| `metrics.py` | Prometheus text on the metrics port, with Triton's metric names |
| `server.py` | the endpoints on one event loop, start, drain on SIGTERM, stop |

Needs the "serve" extra (aiohttp, grpcio, protobuf); nothing here is imported by the rest
of kiln.
"""

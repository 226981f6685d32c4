"""A short spanserve client: streams a generation and prints what the spans saved.

    /usr/bin/python3 examples/python_client.py "((3+4)*(5-2))+6=" --address localhost:50051

It uses the stubs the build generates into <build>/python ($SPANSERVE_BUILD_DIR, default build/).
A server with API keys wants --api-key (or $SPANSERVE_API_KEY); one with TLS wants --tls-ca
(and --tls-cert/--tls-key where it asks for client certificates).
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.environ.get("SPANSERVE_BUILD_DIR", os.path.join(REPO, "build")),
                                "python"))

import grpc  # noqa: E402

from spanserve.v1 import spanserve_pb2 as pb  # noqa: E402
from spanserve.v1 import spanserve_pb2_grpc as pb_grpc  # noqa: E402


def open_channel(args) -> grpc.Channel:
    if not args.tls_ca:
        return grpc.insecure_channel(args.address)

    def read(path):
        with open(path, "rb") as file:
            return file.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.tls_ca),
        private_key=read(args.tls_key) if args.tls_key else None,
        certificate_chain=read(args.tls_cert) if args.tls_cert else None)
    return grpc.secure_channel(args.address, credentials)


def main() -> int:
    parser = argparse.ArgumentParser(description="Stream a generation from spanserve.")
    parser.add_argument("prompt")
    parser.add_argument("--address", default="localhost:50051")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--api-key", default=os.environ.get("SPANSERVE_API_KEY"),
                        help="sent as 'authorization: Bearer <key>' (default $SPANSERVE_API_KEY)")
    parser.add_argument("--tls-ca", help="CA certificate: connect with TLS")
    parser.add_argument("--tls-cert", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", help="client certificate's key (mutual TLS)")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_cert and not args.tls_ca):
        parser.error("--tls-cert and --tls-key go together, with --tls-ca")

    request = pb.GenerateRequest(prompt=args.prompt, max_tokens=args.max_tokens,
                                 temperature=args.temperature, return_spans=True)
    if args.seed is not None:
        request.seed = args.seed
    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else None
    with open_channel(args) as channel:
        stub = pb_grpc.SpanServeStub(channel)
        try:
            for message in stub.GenerateStream(request, timeout=120, metadata=metadata):
                print(message.text, end="", flush=True)
                last = message
        except grpc.RpcError as error:
            print(f"\nerror: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print()
    for segment in last.segments:
        kind = "prompt" if segment.in_prompt else f"refs {list(segment.referenced_ids)}"
        print(f"  segment {segment.id} ({kind}): {segment.text!r}")
    a = last.attention
    print(f"finish {pb.FinishReason.Name(last.finish_reason)}, "
          f"{last.usage.generated_tokens} tokens, seed {last.seed}; "
          f"KV blocks read {a.kv_blocks_read} of {a.kv_blocks_dense} "
          f"({100 * a.saved_fraction:.0f}% saved)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

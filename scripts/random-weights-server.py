#!/usr/bin/env python3
"""An OpenAI-compatible completions server for a model with RANDOM weights, for checking
llem's `openai` engine on a GPU machine that has torch and transformers but no vLLM and
no network. Its text means nothing; its work per token is a real transformer's.

    random-weights-server.py --port P [--backend torch|numpy] [--device cuda]
                             [--hidden 1024] [--layers 8] [--model random-llama]

--backend torch (default) builds a transformers LlamaForCausalLM from a config with
random weights (seeded), in bf16 on --device, and decodes greedily with its KV cache, one
request per thread (concurrent requests share the GPU). --backend numpy is a stand-in
for rehearsing the check on a machine without torch: a random embedding and output
matrix, greedy, on the CPU.

Tokens are bytes: a prompt's tokens are its UTF-8 bytes (so `usage.prompt_tokens` is its
length in bytes), and every output token is one printable character. Every stream ends
with a usage chunk, so llem counts tokens exactly. `ignore_eos` is implied: there is no
end-of-sequence token, a request always produces `max_tokens`.
"""
import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = None
model = None
counter_lock = threading.Lock()
served = 0


class TorchModel:
    def __init__(self, a):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        self.torch = torch
        torch.manual_seed(a.seed)
        config = LlamaConfig(vocab_size=256, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                             num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                             num_key_value_heads=max(1, a.hidden // 256), max_position_embeddings=8192)
        self.model = LlamaForCausalLM(config).to(device=a.device, dtype=torch.bfloat16).eval()
        self.device = a.device
        params = sum(p.numel() for p in self.model.parameters())
        print(f"random-weights-server: llama {a.layers} layers x {a.hidden}, {params / 1e6:.1f} M parameters, bf16 on {a.device}",
              file=sys.stderr, flush=True)

    def generate(self, ids, n):
        torch = self.torch
        with torch.inference_mode():
            x = torch.tensor([ids], device=self.device)
            out = self.model(input_ids=x, use_cache=True)
            for _ in range(n):
                token = out.logits[:, -1, :].argmax(-1)
                yield int(token.item())
                out = self.model(input_ids=token[:, None], past_key_values=out.past_key_values, use_cache=True)


class NumpyModel:
    def __init__(self, a):
        import numpy as np

        self.np = np
        rng = np.random.default_rng(a.seed)
        self.embed = rng.standard_normal((256, a.hidden), dtype=np.float32)
        self.mix = rng.standard_normal((a.hidden, a.hidden), dtype=np.float32) / a.hidden ** 0.5
        self.out = rng.standard_normal((a.hidden, 256), dtype=np.float32)
        print(f"random-weights-server: numpy stand-in, hidden {a.hidden}, on the CPU", file=sys.stderr, flush=True)

    def generate(self, ids, n):
        np = self.np
        state = self.embed[ids].mean(axis=0)
        for _ in range(n):
            state = np.tanh(state @ self.mix)
            token = int((state @ self.out).argmax())
            yield token
            state = 0.5 * state + 0.5 * self.embed[token]


def text_of(token):
    return chr(32 + token % 95)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *a):
        sys.stderr.write("random-weights-server: " + (fmt % a) + "\n")

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"status": "ok"})
        if self.path == "/v1/models":
            return self.reply(200, {"object": "list", "data": [{"id": args.model, "object": "model", "owned_by": "random-weights"}]})
        self.reply(404, {"error": {"message": f"no route {self.path}"}})

    def chunk(self, rid, text, finish):
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": args.model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

    def do_POST(self):
        global served
        if self.path != "/v1/completions":
            return self.reply(404, {"error": {"message": f"only /v1/completions is served, not {self.path}"}})
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if body.get("model") != args.model:
            return self.reply(404, {"error": {"message": f"The model `{body.get('model')}` does not exist; this server has `{args.model}`."}})
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            prompt = json.dumps(prompt)
        ids = list(prompt.encode())[-4096:] or [32]
        n = int(body.get("max_tokens") or 16)
        with counter_lock:
            served += 1
            rid = f"cmpl-{served}"
        tokens = model.generate(ids, n)
        if not body.get("stream"):
            text = "".join(text_of(t) for t in tokens)
            return self.reply(200, {**self.chunk(rid, text, "length"),
                                    "usage": {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i, t in enumerate(tokens):
            event = self.chunk(rid, text_of(t), "length" if i + 1 == n else None)
            self.wfile.write(("data: " + json.dumps(event) + "\n\n").encode())
            self.wfile.flush()
        usage = {**self.chunk(rid, "", None), "choices": [],
                 "usage": {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}}
        self.wfile.write(("data: " + json.dumps(usage) + "\n\ndata: [DONE]\n\n").encode())


def main():
    global args, model
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", choices=["torch", "numpy"], default="torch")
    p.add_argument("--device", default="cuda")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="random-llama", help="the name it serves (requests must use it)")
    args = p.parse_args()
    model = TorchModel(args) if args.backend == "torch" else NumpyModel(args)
    # A burst of concurrent connections must not overflow the default backlog of 5 (a SYN
    # retry would add a second to some requests' TTFT).
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"random-weights-server: listening on {args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

"""A steady GPU load for scripts/gpu-check: fp16 matmuls on cuda:0 for N seconds."""
import argparse
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=float, default=30.0)
args = parser.parse_args()

a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
end = time.monotonic() + args.seconds
n = 0
while time.monotonic() < end:
    a = (a @ b).clamp_(-1, 1)
    n += 1
    if n % 20 == 0:
        torch.cuda.synchronize()
torch.cuda.synchronize()
print(f"{n} matmuls of 8192² in {args.seconds} s")

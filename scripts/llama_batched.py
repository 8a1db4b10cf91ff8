# llama.cpp's batched decode and long-prompt prefill through llama-cpp-python's low-level
# API: B sequences of one prompt, greedy (argmax per step), each step one llama_decode of
# B tokens; and one sequence of P prompt tokens prefilled in one llama_decode.
import json, sys, time
import numpy as np
import llama_cpp
from llama_cpp import Llama

model, prompt, n, threads, batches, long_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), [int(b) for b in sys.argv[5].split(",")], int(sys.argv[6])
llm = Llama(model_path=model, n_ctx=512, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
params = llm.context_params
params.n_seq_max = max(batches)
params.n_ctx = 4096
params.n_batch = 512
params.n_ubatch = 512
ctx = llama_cpp.llama_init_from_model(llm.model, params)
vocab = llama_cpp.llama_n_vocab(llama_cpp.llama_model_get_vocab(llm.model))
ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
long_ids = llm.tokenize((" ".join([prompt] * 20)).encode(), add_bos=True, special=False)[:long_n]
batch = llama_cpp.llama_batch_init(4096, 0, max(batches))

def submit(entries):
    """entries: (token, pos, seq, wants_logits); returns the logit rows' argmax, in order."""
    batch.n_tokens = len(entries)
    for i, (tok, pos, seq, out) in enumerate(entries):
        batch.token[i] = tok; batch.pos[i] = pos; batch.n_seq_id[i] = 1; batch.seq_id[i][0] = seq; batch.logits[i] = out
    assert llama_cpp.llama_decode(ctx, batch) == 0
    picks = []
    for i, e in enumerate(entries):
        if e[3]:
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(vocab,))
            picks.append(int(row.argmax()))
    return picks

def clear():
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)

def decode_rate(b, n):
    clear()
    entries = [(t, p, s, p == len(ids) - 1) for s in range(b) for p, t in enumerate(ids)]
    nxt = submit(entries)
    t0 = time.perf_counter()
    for step in range(n):
        nxt = submit([(nxt[s], len(ids) + step, s, True) for s in range(b)])
    return b * n / (time.perf_counter() - t0)

def prefill_rate():
    clear()
    t0 = time.perf_counter()
    submit([(t, p, 0, p == len(long_ids) - 1) for p, t in enumerate(long_ids)])
    return len(long_ids) / (time.perf_counter() - t0)

decode_rate(1, 4); prefill_rate()  # warm
out = {"engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__}, low-level batch API)", "prompt_tokens": len(ids), "decode_tokens": n, "threads": threads,
       "batched": [{"batch": b, "decode_tok_s": decode_rate(b, n)} for b in batches],
       "long_prompt_tokens": len(long_ids), "long_prefill_tok_s": prefill_rate()}
print(json.dumps(out))

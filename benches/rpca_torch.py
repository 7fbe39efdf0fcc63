#!/usr/bin/env python3
"""PyTorch side of the `mmengine fit` timing: the micromotion paper's RPCA_gpu loop (restated in
golden/micromotion_rpca/README.md) per W+ layer, then the exact rank-q truncated SVD and the direction, on the CPU
or (--device cuda) the GPU.

Usage (python with torch and numpy, e.g. /work/torchenv/bin/python):
  # time the fit of anchors [k, L, D] (.npy), float32 like the paper, layers in order as get_pca_latent runs them
  python benches/rpca_torch.py --anchors anchors.npy --threads 2 --repeat 5 [--dtype float64]
  # also compare with an `mmengine fit` output file (L, S, lowrank, direction, iterations)
  python benches/rpca_torch.py --anchors anchors.npy --check fit.safetensors
  # write anchors: golden case E's 11 anchors plus one more row (the last anchor plus noise), [12, 18, 512]
  python benches/rpca_torch.py --make-anchors12 ../shared/golden/micromotion_rpca/rpca.safetensors out.npy
"""
import argparse, json, struct, time

import numpy as np
import torch

ST_DTYPES = {'F32': np.float32, 'F64': np.float64, 'I32': np.int32, 'I64': np.int64, 'U8': np.uint8}


def read_safetensors(path):
    """All tensors of a safetensors file as numpy arrays (no safetensors package in the benchmark environment)."""
    with open(path, 'rb') as f:
        raw = f.read()
    (n,) = struct.unpack('<Q', raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == '__metadata__':
            continue
        a, b = e['data_offsets']
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=ST_DTYPES[e['dtype']]).reshape(e['shape'])
    return out


def shrink(x, t):
    return torch.sign(x) * torch.clamp(torch.abs(x) - t, min=0)


def rpca(m, max_iter):
    """One layer: the paper's loop (absolute tol on squared norms against a relative err)."""
    norm2 = torch.sum(m * m)
    mu = m.numel() / (4 * norm2.item())
    mu_inv = 1.0 / mu
    lmbda = 1.0 / np.sqrt(max(m.shape))
    tol = 1e-7 * norm2.item()
    s = torch.zeros_like(m)
    y = torch.zeros_like(m)
    low = torch.zeros_like(m)
    err, it = float('inf'), 0
    while err > tol and it < max_iter:
        u, sv, vh = torch.linalg.svd(m - s + mu_inv * y, full_matrices=False)
        low = u @ torch.diag(shrink(sv, mu_inv)) @ vh
        s = shrink(m - low + mu_inv * y, mu_inv * lmbda)
        r = m - low - s
        y = y + mu * r
        err = (torch.sum(r * r) / norm2).item()
        it += 1
    return low, s, it, err


def fit(anchors, rank, max_iter, frm, to):
    k, n_layer, _ = anchors.shape
    lows, sparses, lowranks, iters, errs = [], [], [], [], []
    for l in range(n_layer):
        low, s, it, err = rpca(anchors[:, l, :], max_iter)
        u, sv, vh = torch.linalg.svd(low, full_matrices=False)
        lowranks.append(u[:, :rank] @ torch.diag(sv[:rank]) @ vh[:rank])
        lows.append(low)
        sparses.append(s)
        iters.append(it)
        errs.append(err)
    lowrank = torch.stack(lowranks, 1)
    return dict(L=torch.stack(lows, 1), S=torch.stack(sparses, 1), lowrank=lowrank,
                direction=lowrank[to] - lowrank[frm], iterations=iters, final_err=errs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--anchors', help='.npy [k, L, D]')
    p.add_argument('--rank', type=int, default=4)
    p.add_argument('--max-iter', type=int, default=1000)
    p.add_argument('--from', dest='frm', type=int, default=0)
    p.add_argument('--to', type=int, default=-1)
    p.add_argument('--dtype', choices=['float32', 'float64'], default='float32')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--device', default='cpu', help='cpu or cuda')
    p.add_argument('--repeat', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--check', help='mmengine fit output .safetensors to compare with')
    p.add_argument('--make-anchors12', nargs=2, metavar=('GOLDEN', 'OUT'))
    args = p.parse_args()

    if args.make_anchors12:
        golden, out = args.make_anchors12
        a = read_safetensors(golden)['anchors']
        rng = np.random.default_rng(12)
        extra = a[-1:] + 0.02 * rng.standard_normal(a[-1:].shape).astype(np.float32)
        np.save(out, np.concatenate([a, extra]).astype(np.float32))
        print(f'wrote {out} {np.concatenate([a, extra]).shape}')
        return

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    anchors = torch.from_numpy(np.load(args.anchors)).to(device=args.device, dtype=dtype)
    to = args.to % anchors.shape[0]
    for _ in range(args.warmup):
        fit(anchors, args.rank, args.max_iter, args.frm, to)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        res = fit(anchors, args.rank, args.max_iter, args.frm, to)
        if anchors.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(f'torch {torch.__version__} {args.dtype} on {args.device}, {args.threads} threads, anchors {list(anchors.shape)}: '
          f'median {1e3 * np.median(times):.2f} ms, min {1e3 * min(times):.2f} ms over {args.repeat} runs; '
          f'iterations {res["iterations"]}')
    if args.check:
        got = read_safetensors(args.check)
        assert list(got['iterations']) == res['iterations'], (list(got['iterations']), res['iterations'])
        for name in ('L', 'S', 'lowrank', 'direction'):
            err = np.abs(got[name].astype(np.float64) - res[name].double().cpu().numpy()).max()
            print(f'{name}: max abs difference to mmengine {err:.3e}')


if __name__ == '__main__':
    main()

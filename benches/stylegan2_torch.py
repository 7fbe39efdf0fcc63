#!/usr/bin/env python3
"""PyTorch side of the mmengine CPU benchmark: a small, self-contained StyleGAN2 generator.

It computes the same network as the Rust engine (NVlabs StyleGAN2: mapping + skip synthesis, float32, noise 'const')
in the reference formulation: per-sample grouped modulated convolution (NVlabs' fused path) and upfirdn2d written as
zero insertion + padding + a depthwise conv2d. Weights come from an mmengine safetensors file or are random.

Usage (python with torch and numpy, e.g. /work/torchenv/bin/python):
  # benchmark random weights of a named config (ffhq256 | ffhq512 | ffhq1024 | tiny), mapping + synthesis timed
  python benches/stylegan2_torch.py --config ffhq256 --batch 8 --iters 3 --warmup 1 --threads 2 [--json]
  # benchmark a converted checkpoint (`mmengine convert MODEL.pkl -o OUT.safetensors`)
  python benches/stylegan2_torch.py --model weights/demo-32px.safetensors --batch 16 --iters 10
  # prove it is the same network: compare with a golden case (path, or name under ../shared/golden)
  python benches/stylegan2_torch.py --model weights/demo-32px.safetensors --check-golden nvlabs_tiny
  # emulate stylegan2-ada-pytorch's float16 blocks (num_fp16_res) as they run on the CPU in the d72cc7d code
  python benches/stylegan2_torch.py --model snap.safetensors --check-golden nvlabs_snapshot --fp16-res 2
"""
import argparse, json, math, os, resource, struct, sys, time

import numpy as np
import torch
import torch.nn.functional as F

CONFIGS = {  # name: (resolution, z_dim = w_dim, channel_base, channel_max, conv_clamp)
    'ffhq1024': (1024, 512, 32768, 512, 256.0),
    'ffhq512': (512, 512, 32768, 512, 256.0),
    'ffhq256': (256, 512, 16384, 512, 256.0),
    'tiny': (32, 64, 1024, 128, None),
}
SQRT2 = math.sqrt(2.0)
ST_DTYPES = {'F32': np.float32, 'F16': np.float16, 'F64': np.float64, 'I64': np.int64, 'I32': np.int32}


def read_safetensors(path):
    """Plain-python safetensors reader: 8-byte little-endian header length, JSON header, raw data."""
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop('__metadata__', {})
    tensors = {}
    for name, t in header.items():
        a, b = t['data_offsets']
        arr = np.frombuffer(data[a:b], dtype=ST_DTYPES[t['dtype']]).reshape(t['shape'])
        tensors[name] = torch.from_numpy(arr.copy())
    return tensors, meta


def load_model(path):
    t, meta = read_safetensors(path)
    return json.loads(meta['mmengine.network']), t


def random_model(config, seed=0):
    """Random weights with the mmengine layout for a named config (same init scheme as the golden tiny networks)."""
    res, zdim, base, cmax, clamp = CONFIGS[config]
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g)
    ch = lambda r: min(base // r, cmax)
    t = {'const': rn(ch(4), 4, 4), 'w_avg': 0.1 * rn(zdim)}
    for i in range(8):
        t[f'mapping.{i}.weight'], t[f'mapping.{i}.bias'] = rn(zdim, zdim) / 0.01, 0.2 * rn(zdim) / 0.01
    layers, wi, r = [], 0, 4
    while r <= res:
        cin = ch(r // 2) if r > 4 else ch(4)
        convs = [('conv1', ch(4), 1)] if r == 4 else [('conv0', cin, 2), ('conv1', ch(r), 1)]
        for lname, i_c, up in convs + [('torgb', ch(r), 1)]:
            name, rgb = f'b{r}.{lname}', lname == 'torgb'
            o_c, k = (3, 1) if rgb else (ch(r), 3)
            layers.append(dict(name=name, kind='torgb' if rgb else 'conv', ws_index=wi, in_channels=i_c,
                               out_channels=o_c, resolution=r, up=up, kernel=k, demodulate=not rgb,
                               weight_gain=1 / math.sqrt(i_c) if rgb else 1.0, clamp=clamp,
                               noise_strength=None if rgb else 0.1))
            t[name + '.weight'] = (0.5 if rgb else 1.0) * rn(o_c, i_c, k, k)
            t[name + '.affine.weight'], t[name + '.affine.bias'] = rn(i_c, zdim), 1 + 0.25 * rn(i_c)
            t[name + '.bias'] = 0.1 * rn(o_c)
            if not rgb:
                t[name + '.noise'] = rn(r, r)
                wi += 1  # each torgb shares its w with the next block's conv0
        r *= 2
    meta = dict(z_dim=zdim, w_dim=zdim, num_ws=wi + 1, resolution=res, mapping_layers=8, mapping_lr_mul=0.01,
                conv_clamp=clamp, layers=layers)
    return meta, t


# ---------------------------------------------------------------------------------------------- ops
def upfirdn2d(x, up, pad, gain):
    """Zero insertion (up), pad (x0, x1, y0, y1), then the 4x4 [1,3,3,1] filter as a depthwise conv2d."""
    B, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(B, C, H, 1, W, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(B, C, H * up, W * up)
    x = F.pad(x, list(pad))
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(k, k) / 64 * gain  # symmetric, so true convolution = correlation
    return F.conv2d(x, f.to(x.dtype)[None, None].repeat(C, 1, 1, 1), groups=C)


def conv(x, w, up, groups=1):
    """3x3 pad 1 cross-correlation, or (up=2) stride-2 transposed conv (per-group weight [I,O,k,k], not flipped) +
    blur; 1x1 for ToRGB. w is [groups*O, I, k, k]."""
    k = w.shape[-1]
    if up == 1:
        return F.conv2d(x, w, padding=k // 2, groups=groups)
    O, I = w.shape[0] // groups, w.shape[1]
    wt = w.reshape(groups, O, I, k, k).transpose(1, 2).reshape(groups * I, O, k, k)
    return upfirdn2d(F.conv_transpose2d(x, wt, stride=2, groups=groups), 1, (1, 1, 1, 1), 4.0)


def modulated_layer(x, L, t, w, noise_mode, fused):
    """One SynthesisLayer / ToRGBLayer. x may be float16 (ada-pytorch fp16 blocks), styles/w are float32."""
    n, B = L['name'], x.shape[0]
    weight = t[n + '.weight']
    styles = torch.addmm(t[n + '.affine.bias'][None], w, (t[n + '.affine.weight'] * (1 / math.sqrt(w.shape[1]))).t())
    demod = L['demodulate']
    if not demod:
        styles = styles * L['weight_gain']
    noise = None
    if L['kind'] == 'conv' and noise_mode == 'const':
        noise = t[n + '.noise'] * L['noise_strength']
    if x.dtype == torch.float16 and demod:  # ada-pytorch: pre-normalise to avoid fp16 overflow
        I, k = weight.shape[1], weight.shape[2]
        weight = weight * (1 / math.sqrt(I * k * k) / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)
    wmod = weight[None] * styles[:, None, :, None, None]  # [B, O, I, k, k]
    dcoefs = (wmod.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demod else None
    if fused:  # one grouped conv with per-sample weights
        if demod:
            wmod = wmod * dcoefs[:, :, None, None, None]
        y = conv(x.reshape(1, -1, *x.shape[2:]), wmod.reshape(-1, *wmod.shape[2:]).to(x.dtype), L['up'], groups=B)
        y = y.reshape(B, -1, *y.shape[2:])
        if noise is not None:
            y = y.add_(noise)
    else:  # shared weight: scale input channels, conv, scale output channels (+ noise as one fma)
        y = conv(x * styles.to(x.dtype)[:, :, None, None], weight.to(x.dtype), L['up'])
        if demod and noise is not None:
            y = torch.addcmul(noise.to(y.dtype), y, dcoefs.to(y.dtype)[:, :, None, None])
        elif demod:
            y = y * dcoefs.to(y.dtype)[:, :, None, None]
        elif noise is not None:
            y = y.add_(noise.to(y.dtype))
    y = y + t[n + '.bias'].to(y.dtype)[None, :, None, None]
    if L['kind'] == 'conv':
        y = F.leaky_relu(y, 0.2) * SQRT2
    if L['clamp'] is not None:
        y = y.clamp(-L['clamp'], L['clamp'])
    return y


def mapping(meta, t, z, psi=1.0):
    x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
    lr = meta['mapping_lr_mul']
    for i in range(meta['mapping_layers']):
        W, b = t[f'mapping.{i}.weight'], t[f'mapping.{i}.bias']
        x = F.leaky_relu(x.matmul((W * (lr / math.sqrt(W.shape[1]))).t()) + b * lr, 0.2) * SQRT2
    if psi != 1.0:
        x = t['w_avg'].lerp(x, psi)
    return x[:, None].repeat(1, meta['num_ws'], 1)


def synthesis(meta, t, ws, noise_mode='const', fp16_res=0):
    """Skip-architecture synthesis. Blocks at the top `fp16_res` resolutions run as ada-pytorch's fp16 blocks."""
    res_log2 = int(math.log2(meta['resolution']))
    fp16_from = max(2 ** (res_log2 + 1 - fp16_res), 8) if fp16_res > 0 else math.inf
    B = ws.shape[0]
    x = img = None
    for r in sorted({L['resolution'] for L in meta['layers']}):
        dtype = torch.float16 if r >= fp16_from else torch.float32
        fused = dtype == torch.float32 or B == 1
        x = t['const'][None].repeat(B, 1, 1, 1).to(dtype) if x is None else x.to(dtype)
        for L in [L for L in meta['layers'] if L['resolution'] == r]:
            w = ws[:, L['ws_index']]
            if L['kind'] == 'conv':
                x = modulated_layer(x, L, t, w, noise_mode, fused)
            else:
                y = modulated_layer(x, L, t, w, noise_mode, fused).to(torch.float32)
                img = y if img is None else upfirdn2d(img, 2, (2, 1, 2, 1), 4.0).add_(y)
    return img


# ---------------------------------------------------------------------------------------------- modes
def check_golden(args, meta, t):
    case = args.check_golden
    if not os.path.isdir(case):
        # Golden data lives beside the repository (../shared/golden), or where MMENGINE_GOLDEN says.
        root = os.environ.get('MMENGINE_GOLDEN') or os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'golden')
        case = os.path.join(root, case)
    c, _ = read_safetensors(os.path.join(case, 'cases.safetensors'))
    out = {}
    if 'z' in c and 'ws' in c:
        out['ws'] = (mapping(meta, t, c['z']) - c['ws']).abs().max().item()
    for key in sorted(k for k in c if k.startswith('img_')):
        stem, mode = key[4:].rsplit('_', 1) if key.count('_') > 1 else ('', key[4:])
        ws = c['ws_' + stem if stem else 'ws']
        img = synthesis(meta, t, ws, mode, args.fp16_res)
        out[key] = (img - c[key]).abs().max().item()
        out[key + '.max_abs_ref'] = c[key].abs().max().item()
    return out


def bench(args, meta, t):
    g = torch.Generator().manual_seed(123)
    z = torch.randn(args.batch, meta['z_dim'], generator=g)
    for _ in range(args.warmup):
        synthesis(meta, t, mapping(meta, t, z), 'const', args.fp16_res)
    times, cpu0 = [], time.process_time()
    for _ in range(args.iters):
        t0 = time.perf_counter()
        img = synthesis(meta, t, mapping(meta, t, z), 'const', args.fp16_res)
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0  # cores actually used = cpu / wall (other load on the machine shows here)
    assert torch.isfinite(img).all()
    ms = 1000 * float(np.median(times))
    return dict(model=args.model or args.config, resolution=meta['resolution'], batch=args.batch,
                threads=torch.get_num_threads(), iters=args.iters, ms_per_batch=ms,
                ms_per_batch_min=1000 * min(times), images_per_s=args.batch / (ms / 1000),
                cpu_utilisation=cpu / sum(times),
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, torch=torch.__version__)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--model', help='mmengine safetensors file')
    src.add_argument('--config', choices=sorted(CONFIGS), help='random weights of a named config')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (0: torch default)')
    p.add_argument('--fp16-res', type=int, default=0, help='run the top N resolutions as ada-pytorch fp16 blocks')
    p.add_argument('--check-golden', metavar='CASE', help='golden case dir or name; needs --model')
    p.add_argument('--json', action='store_true')
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    meta, t = load_model(args.model) if args.model else random_model(args.config)
    with torch.inference_mode():
        if args.check_golden:
            if not args.model:
                p.error('--check-golden needs --model')
            r = check_golden(args, meta, t)
            if args.json:
                print(json.dumps(r))
            else:
                for k, v in r.items():
                    print(f'{k:40s} {v:.3e}')
            return
        r = bench(args, meta, t)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']} {r['resolution']}px batch {r['batch']} threads {r['threads']}: "
              f"{r['ms_per_batch']:.1f} ms/batch (min {r['ms_per_batch_min']:.1f}), {r['images_per_s']:.3f} images/s, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, {r['cpu_utilisation']:.2f} cores busy")


if __name__ == '__main__':
    main()

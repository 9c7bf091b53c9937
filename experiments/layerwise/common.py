import sys, time, json
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2]))
from pathlib import Path
import numpy as np, torch
import torch.nn.functional as F
from lava_allnet.config import ModelConfig, TrainConfig
from lava_allnet.model import ConvBlock, SEBlock
from training import loop, augment, distill

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / '../shared/data/all-aria/original'

def load(run_dir, init=str(ROOT / 'runs/stage4.net')):
    run_dir = Path(run_dir); run_dir.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig()
    tc = TrainConfig(split_from=str(ROOT / 'models/neurallnet-aria.split.json'))
    data = loop.prepare_data(run_dir, DATA, cfg, tc, 0)
    cfg = ModelConfig(class_names=data.class_names, num_classes=len(data.class_names)) if tuple(cfg.class_names) != data.class_names else cfg
    net = loop.build_model(cfg)
    net.load_state_dict(loop.initial_weights(Path(init), cfg))
    loop.fix_norm_means(net)
    return cfg, tc, data, net

def prefix(net, x, upto='se3', keep=(), penalty=False):
    """Run blocks up to `upto` from encoded x; returns (out, acts, range penalty)."""
    acts, pen = {}, 0.0
    for name, block in net.blocks.items():
        if isinstance(block, SEBlock):
            x = block(x)[0]
            acts[f'{name}.scale'] = x
        elif isinstance(block, ConvBlock):
            x, cur, vol = block(x, net.time_steps)
            acts[name] = x
            if penalty and torch.is_grad_enabled():
                from lava_allnet import fixed_point as fx
                pen = pen + fx.state_range_penalty(cur, vol)
        if name == upto:
            break
    return x, acts, pen

@torch.no_grad()
def features(net, images, stage='se3.scale', upto='se3', batch=32):
    net.eval(); out = []
    for i in range(0, len(images), batch):
        _, acts, _ = prefix(net, net.encode(images[i:i+batch]), upto)
        out.append(acts[stage].sum(1).flatten(1).float())
    return torch.cat(out).numpy()

def probe(net, data, stage='se3.scale', upto='se3'):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    tr, va = data.split['train'], data.split['val']
    Xtr = features(net, data.images[tr], stage, upto); Xva = features(net, data.images[va], stage, upto)
    sc = StandardScaler().fit(Xtr); Xtr, Xva = sc.transform(Xtr), sc.transform(Xva)
    ytr, yva = data.labels[tr].numpy(), data.labels[va].numpy()
    res = {}
    for C in (1e-4, 1e-3, 1e-2, 1e-1):
        m = LogisticRegression(C=C, max_iter=300).fit(Xtr, ytr)
        res[C] = float((m.predict(Xva) == yva).mean())
    return res

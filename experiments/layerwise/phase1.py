"""Phase 1: conv1..conv3 (+ se3) trained by hints alone (teacher's ReLU features), nothing above."""
import sys, argparse; sys.path.insert(0, str(__import__('pathlib').Path(__file__).parent))
from common import *
from training.hint import Hint
p = argparse.ArgumentParser()
p.add_argument('--out'); p.add_argument('--lr', type=float); p.add_argument('--epochs', type=int)
p.add_argument('--seed', type=int, default=0); p.add_argument('--scratch', action='store_true')
p.add_argument('--teacher', default=str(ROOT/'runs/teachers/teacher-s1.pt')); p.add_argument('--threads', type=int, default=1)
p.add_argument('--range-weight', type=float, default=1e-3)
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(a.seed)
out = Path(a.out)
cfg, tc, data, net = load(out)
loop.enable_fast_cpu()
tr = torch.from_numpy(data.split['train'])
if a.scratch:
    torch.manual_seed(a.seed)
    fresh = loop.build_model(cfg)
    sd = net.state_dict()
    for k, v in fresh.state_dict().items():
        if k.split('.')[1] in ('conv1', 'conv2', 'conv3', 'se3'): sd[k] = v
    net.load_state_dict(sd)
    # rates and means of the fresh prefix (calibrate sets thresholds/weights scale per layer)
    loop.fix_norm_means(net, False)
    pick = tr[torch.randperm(len(tr), generator=loop._gen(a.seed, 99))[:32]]
    print('rates', net.calibrate(net.encode(data.images[pick])))
    sub = tr[torch.randperm(len(tr), generator=loop._gen(a.seed, 98))[:256]]
    # the prefix's means only: mkinit.py takes conv4.. from stage 4 and recalibrates them itself
    loop.calibrate_norm_means(net, data.images[sub], blocks=('conv1', 'conv2', 'conv3'))
    loop.fix_norm_means(net)
loop.learn_norm_means(net)
teacher = distill.load_teacher(Path(a.teacher), cfg)
teacher.eval()
for p_ in teacher.parameters(): p_.requires_grad_(False)
hint = Hint(cfg, (1, 2, 3))
norm_idx = tr[torch.randperm(len(tr), generator=loop._gen(a.seed, 7))[:128]]
print('adapter fit', hint.fit(net, teacher, data.images[norm_idx]), flush=True)
train_names = ('conv1', 'conv2', 'conv3', 'se3')
for name, prm in net.named_parameters():
    prm.requires_grad_(name.split('.')[1] in train_names)
wts = [prm for n, prm in net.named_parameters() if prm.requires_grad and not loop.is_learned_bias(n)]
bias = [prm for n, prm in net.named_parameters() if prm.requires_grad and loop.is_learned_bias(n)]
groups = [{'params': wts, 'lr': a.lr}, {'params': bias, 'lr': a.lr, 'eps': 1e-20}, {'params': list(hint.parameters()), 'lr': a.lr}]
opt = torch.optim.Adam(groups, lr=a.lr)
bs = 16; nb = (len(tr) + bs - 1) // bs
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g['lr'] for g in groups], total_steps=a.epochs * nb, pct_start=0.15)
va = torch.from_numpy(data.split['val'])
@torch.no_grad()
def val_hint():
    net.eval(); tot = 0.0
    for i in range(0, len(va), 32):
        x = data.images[va[i:i+32]]
        _, acts, _ = prefix(net, net.encode(x))
        _, feats = teacher.forward_features(x, (1, 2, 3))
        tot += hint.loss(acts, net, feats).item() * len(x)
    return tot / len(va)
print('epoch 0 val hint', round(val_hint(), 4), flush=True)
for ep in range(a.epochs):
    perm = tr[torch.randperm(len(tr), generator=loop._gen(a.seed, ep))]
    net.train(); t0 = time.time(); s = 0.0
    for b in range(nb):
        idx = perm[b*bs:(b+1)*bs]
        x = augment.augment_batch(data.images[idx], loop._gen(a.seed, ep, b))
        _, acts, pen = prefix(net, net.encode(x), penalty=True)
        with torch.no_grad():
            _, feats = teacher.forward_features(x, (1, 2, 3))
        h = hint.loss(acts, net, feats)
        loss = h + a.range_weight * pen
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
        s += h.item() * len(idx)
    vh = val_hint()
    print(f'epoch {ep+1}: train hint {s/len(tr):.4f} val hint {vh:.4f} share {loop.adam_step_share(opt, net)} ({time.time()-t0:.0f} s)', flush=True)
    torch.save({'model': net.state_dict()}, out / 'phase1.pt')
print('probe', probe(net, data), flush=True)

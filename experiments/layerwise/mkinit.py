"""Phase-1 prefix + stage-4's conv4.. ; conv4.. batch-norm means recalibrated over all training images."""
import sys; sys.path.insert(0, str(__import__('pathlib').Path(__file__).parent))
from common import *
src, dst = sys.argv[1], sys.argv[2]
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
cfg, tc, data, net = load(str(ROOT / 'runs/lw-probe'))
loop.fix_norm_means(net, False)
sd = net.state_dict(); p1 = torch.load(src)['model']
for k in sd:
    if k.split('.')[1] in ('conv1', 'conv2', 'conv3', 'se3'): sd[k] = p1[k]
net.load_state_dict(sd)
images = data.images[torch.from_numpy(data.split['train'])]
net.eval()
with torch.no_grad():
    for name in ('conv4', 'conv5', 'fc'):
        n = net.blocks[name].neuron.norm
        if n is None: continue
        before = n.running_mean.clone()
        n.running_mean.zero_(); mom = n.momentum; n.train(); n.update = True
        for i in range(0, len(images), 16):
            n.momentum = len(images[i:i+16]) / min(len(images), i + 16)
            net(net.encode(images[i:i+16]))
        n.eval(); n.momentum = mom
        print(name, 'mean moved by', float((n.running_mean - before).abs().mean()), 'of', float(before.abs().mean()))
loop.fix_norm_means(net)
ev = loop.evaluate(net, data.images[torch.from_numpy(data.split['val'])], data.labels[torch.from_numpy(data.split['val'])], tc.loss_scale)
print('val acc of the combined net before phase 2', ev['accuracy'], 'loss', ev['loss'])
torch.save({'model': net.state_dict()}, dst)

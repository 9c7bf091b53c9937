"""Phase-1 prefix + stage-4's conv4.. ; conv4.. batch-norm means recalibrated over all training images."""
import sys; sys.path.insert(0, str(__import__('pathlib').Path(__file__).parent))
from common import *
src, dst = sys.argv[1], sys.argv[2]
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
cfg, tc, data, net = load(str(ROOT / 'runs/lw-probe'))
sd = net.state_dict(); p1 = torch.load(src)['model']
for k in sd:
    if k.split('.')[1] in ('conv1', 'conv2', 'conv3', 'se3'): sd[k] = p1[k]
net.load_state_dict(sd)
images = data.images[torch.from_numpy(data.split['train'])]
before = {k: net.blocks[k].neuron.norm.running_mean.clone() for k in ('conv4', 'conv5', 'fc')}
net.eval()
loop.calibrate_norm_means(net, images, blocks=tuple(before))
for k, m in before.items():
    print(k, 'mean moved by', float((net.blocks[k].neuron.norm.running_mean - m).abs().mean()), 'of', float(m.abs().mean()))
loop.fix_norm_means(net)
ev = loop.evaluate(net, data.images[torch.from_numpy(data.split['val'])], data.labels[torch.from_numpy(data.split['val'])], tc.loss_scale)
print('val acc of the combined net before phase 2', ev['accuracy'], 'loss', ev['loss'])
torch.save({'model': net.state_dict()}, dst)

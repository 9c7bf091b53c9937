import sys; sys.path.insert(0, str(__import__('pathlib').Path(__file__).parent))
from common import *
torch.set_num_threads(2)
init = sys.argv[1]
cfg, tc, data, net = load(str(ROOT / 'runs/lw-probe'), init)
t=time.time()
print(init, probe(net, data), f'{time.time()-t:.0f}s', flush=True)

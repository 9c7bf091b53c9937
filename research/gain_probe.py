"""Per-class validation accuracy of a v2 model and of its run's ANN teacher under global exposure gains
(scaled, rounded, clipped at 255, as `robustness` does), both behind the model's front end (research):

    python research/gain_probe.py MODEL.net RUN_DIR 1.0,1.3,1.4,0.7

RUN_DIR holds the run's teacher.pt. Validation split of models/neurallnet-aria.split.json only.
"""
import sys
import numpy as np, torch
sys.path.insert(0, '.')
import lava_allnet
from lava_allnet.api import dataset_entries
from hw_targets.inference import load_chunk
from hw_targets.backends import get_backend
from lava_allnet.result import make_results
from lava_allnet.frontend import FrontEnd
from lava_allnet.config import ModelConfig
from training.distill import load_teacher

model_path, run_dir = sys.argv[1], sys.argv[2]
gains = [float(g) for g in sys.argv[3].split(',')]
torch.set_num_threads(2)
m = lava_allnet.load(model_path)
spec = m.spec
ents = dataset_entries(spec, '../shared/data/all-aria/original', 'models/neurallnet-aria.split.json', 'val')
kept, imgs, _ = load_chunk(ents, spec.input.shape[1], strict=False)
y = np.array([ents[i].label for i in kept])
be = get_backend('torch', spec)
ck = torch.load(f'{run_dir}/teacher.pt', weights_only=False)  # the teacher's model config (front end included)
cfg = ModelConfig.from_dict(ck['config'])
teacher = load_teacher(f'{run_dir}/teacher.pt', cfg)
fe = FrontEnd.from_json(cfg.frontend)
for g in gains:
    x = np.clip(np.round(imgs.astype(np.float64) * g), 0, 255).astype(np.uint8)
    raw = be.run(x)
    res = make_results([str(i) for i in range(len(x))], spec.class_names, spec.population, raw.stage_steps, raw.output_neurons)
    ps = np.array([r.predicted_index for r in res])
    with torch.no_grad():
        pt = teacher(torch.from_numpy(fe.apply(x))).argmax(1).numpy()
    per = lambda p: ' '.join(f'{n[:5]} {np.mean(p[y==k]==k):.2f}' for k, n in enumerate(spec.class_names))
    print(f'gain {g}: student {np.mean(ps==y):.3f} [{per(ps)}] | teacher {np.mean(pt==y):.3f} [{per(pt)}]', flush=True)

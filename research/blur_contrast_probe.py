"""Whether a distortion costs a model through what it does to the front end's statistics (research):

    python research/blur_contrast_probe.py MODEL.net [MODEL.net ...]

Blur lowers each channel's standard deviation (sigma 1.6: to about 0.82, so Reinhard raises the
contrast by about 1.2); salt-and-pepper raises it (3%: the blue channel's by about 2.6). For blur
sigma 1.6 and 3, salt-and-pepper 3% and gain 1.3, validation accuracy with the front end's
coefficients from the distorted image (the product, "own") and from the undistorted one ("clean";
for the gain, the clean coefficients divided by the gain), so only the pixels change.
"""
import sys, numpy as np, torch, lava_allnet
from lava_allnet.api import dataset_inputs
from lava_allnet.evaluation import distort
from lava_allnet import frontend as fe
torch.set_num_threads(2)
inp = None
for path in sys.argv[1:]:
    model = lava_allnet.load(path); classes = model.class_names
    if inp is None:
        inp = dataset_inputs(model.spec, "../shared/data/all-aria/original", "models/neurallnet-aria.split.json", "val")
        y = np.asarray(inp.labels)
    f = model.spec.frontend
    g0, o0 = f.coefficients(inp.images)
    out = []
    for kind, sev in [("gaussian_blur", 1.6), ("gaussian_blur", 3.0), ("salt_pepper", 0.03), ("illumination", 1.3)]:
        x = distort(inp.images, kind, sev)
        accs = []
        for mode in ("own", "clean"):
            if mode == "own":
                fe_x = f.apply(x)
            else:
                g, o = g0, o0
                if kind == "illumination":  # undo only the gain's effect on stats: clean coefficients / gain
                    g = np.round(g0 / sev).astype(np.int64)
                yy = x.astype(np.int64) * g[:, :, None, None] + o[:, :, None, None] + (1 << (fe.SHIFT - 1))
                fe_x = np.clip(yy >> fe.SHIFT, 0, 255).astype(np.uint8)
            saved = f.name; f.name = "none"
            p = np.array([classes.index(r["prediction"]) for r in model.predict(fe_x, backend="torch")])
            f.name = saved
            accs.append(np.mean(p == y))
        out.append(f"{kind} {sev}: own {accs[0]:.3f} clean-coef {accs[1]:.3f}")
    print(path, "|", "; ".join(out), flush=True)

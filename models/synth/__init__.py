"""Synthetic chest radiographs with radiopaque foreign objects, in the Object-CXR layout.

``python -m models.synth --out DIR --n-train N --n-dev N --n-test N --size S --seed K [--workers W]``

The real task's data (Object-CXR, JF Healthcare) cannot ship with NormGate, so the project trains its
default model on these images. They are drawn to look like frontal chest radiographs — body outline and
soft tissue, real lung-field shapes (V7 Labs masks shipped by torchxrayvision), mediastinum and heart,
posterior and anterior ribs, clavicles, spine, diaphragm and gastric bubble, varying exposure, noise and
rotation — with foreign objects of the kinds and sizes Object-CXR annotates, and look-alikes that are not
foreign objects (calcified granulomas, nipple and breast shadows, costal cartilage calcification, dense bone
edges, side markers) in both classes. See docs/data.md.
"""

from models.synth.render import Rendered, RenderedObject
from models.synth.styles import DEFAULT_STYLE, STYLES, render_sample
from models.synth.writer import encode_image, generate

__all__ = ["DEFAULT_STYLE", "STYLES", "Rendered", "RenderedObject", "encode_image", "generate", "render_sample"]

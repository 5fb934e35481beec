"""YOLO11-L lesion detection. Ultralytics' letterbox, NMS and box rescaling serve both runtimes; boxes are
returned in the original image's pixel coordinates."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from spine_ui.bundle.store import Bundle
from spine_ui.config import display_name


@dataclass(frozen=True)
class Lesion:
    label: str  # VinDr data key, e.g. "Spondylolysthesis"
    name: str  # display spelling, e.g. "Spondylolisthesis"
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in original pixels

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box"] = [round(v, 1) for v in self.box]
        d["confidence"] = round(self.confidence, 4)
        return d


@dataclass(frozen=True)
class DetectionResult:
    """The detector's output for one study: lesions (most confident first) and the settings that produced them."""

    lesions: tuple[Lesion, ...]
    conf: float
    iou: float
    imgsz: int
    ran: bool = True  # False: the bundle has no detector

    def __iter__(self):
        return iter(self.lesions)

    def __len__(self) -> int:
        return len(self.lesions)


def letterbox(enhanced: np.ndarray, imgsz: int) -> np.ndarray:
    """uint8 H x W -> float32 1 x 3 x H' x W' in [0, 1], the smallest stride-32 rectangle (dynamic ONNX)."""
    from ultralytics.data.augment import LetterBox

    rgb = np.repeat(enhanced[:, :, None], 3, axis=2)
    boxed = LetterBox(new_shape=(imgsz, imgsz), auto=True, stride=32)(image=rgb)
    return (boxed.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)


def run_detection(enhanced: np.ndarray, original_shape: tuple[int, int], bundle: Bundle) -> DetectionResult:
    """Detect lesions on the enhanced working image and map boxes to ``original_shape`` (H, W)."""
    import torch
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    cfg = bundle.manifest.detector_config
    runner = bundle.detector()
    if runner is None:
        return DetectionResult((), cfg.conf, cfg.iou, cfg.imgsz, ran=False)
    batch = letterbox(enhanced, cfg.imgsz)
    raw = torch.from_numpy(runner(batch))
    det = non_max_suppression(raw, conf_thres=cfg.conf, iou_thres=cfg.iou, nc=len(cfg.classes),
                              max_det=100, max_time_img=5.0)[0]
    if det.numel() == 0:
        return DetectionResult((), cfg.conf, cfg.iou, cfg.imgsz)
    boxes = scale_boxes(batch.shape[2:], det[:, :4].clone(), enhanced.shape[:2]).numpy()
    sy, sx = original_shape[0] / enhanced.shape[0], original_shape[1] / enhanced.shape[1]
    boxes = boxes * np.array([sx, sy, sx, sy])
    out = []
    for (x0, y0, x1, y1), conf, cls in zip(boxes, det[:, 4].tolist(), det[:, 5].int().tolist()):
        label = cfg.classes[cls]
        out.append(Lesion(label, display_name(label), cls, float(conf), (float(x0), float(y0), float(x1), float(y1))))
    return DetectionResult(tuple(sorted(out, key=lambda l: -l.confidence)), cfg.conf, cfg.iou, cfg.imgsz)

"""Post-training quantization: calibrators, TensorRT-format calibration caches, and the
build stage that turns calibrated or Q/DQ models into INT8/FP8 layers.

    from kiln.quant import Calibrator
    config = BuilderConfig(precision="int8", calibrator=Calibrator(loader, method="entropy"))
"""

from kiln.quant.calibration_cache import CalibrationTable
from kiln.quant.calibrators import METHODS, Calibrator

__all__ = ["METHODS", "CalibrationTable", "Calibrator"]

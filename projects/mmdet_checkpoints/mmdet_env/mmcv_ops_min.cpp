// Python bindings for the two mmcv-full 1.7.2 ops that mmdetection's four RSB detectors use at
// test time (nms, roi_align), compiled together with mmcv's own sources for them
// (mmcv/ops/csrc/pytorch/{nms,roi_align}.cpp and cpu/{nms,roi_align}.cpp) by build_mmcv_ops.py.
// The signatures are those the sources define; the keyword names are the ones mmcv's Python
// wrappers (mmcv/ops/nms.py, mmcv/ops/roi_align.py) pass.
#include <torch/extension.h>

using at::Tensor;

Tensor nms(Tensor boxes, Tensor scores, float iou_threshold, int offset);
void roi_align_forward(Tensor input, Tensor rois, Tensor output, Tensor argmax_y, Tensor argmax_x,
                       int aligned_height, int aligned_width, float spatial_scale,
                       int sampling_ratio, int pool_mode, bool aligned);
void roi_align_backward(Tensor grad_output, Tensor rois, Tensor argmax_y, Tensor argmax_x,
                        Tensor grad_input, int aligned_height, int aligned_width,
                        float spatial_scale, int sampling_ratio, int pool_mode, bool aligned);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("nms", &nms, py::arg("boxes"), py::arg("scores"), py::arg("iou_threshold"),
        py::arg("offset"));
  m.def("roi_align_forward", &roi_align_forward, py::arg("input"), py::arg("rois"),
        py::arg("output"), py::arg("argmax_y"), py::arg("argmax_x"), py::arg("aligned_height"),
        py::arg("aligned_width"), py::arg("spatial_scale"), py::arg("sampling_ratio"),
        py::arg("pool_mode"), py::arg("aligned"));
  m.def("roi_align_backward", &roi_align_backward, py::arg("grad_output"), py::arg("rois"),
        py::arg("argmax_y"), py::arg("argmax_x"), py::arg("grad_input"),
        py::arg("aligned_height"), py::arg("aligned_width"), py::arg("spatial_scale"),
        py::arg("sampling_ratio"), py::arg("pool_mode"), py::arg("aligned"));
}

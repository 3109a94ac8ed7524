// TensorRT IPluginV3 plugins for qdeploy's fused quadratic ONNX nodes (domain trt.plugins,
// plugin_namespace "qdeploy", plugin_version "1"):
//
//   AtrousQuadConv    (X, W_A, B_A, W_B, B_B, W_U, B_U) -> U(A(X) * B(X))      NCHW
//   AtrousQuadProduct (X, W_A, B_A, W_B, B_B)           -> A(X) * B(X)         NCHW
//   QuadLinear        (X, W_A, B_A, W_B, B_B, W_U, B_U) -> U((A X) * (B X))    over X's last axis
//
// A and B are grouped, strided, dilated convolutions (kernel_shape, strides, dilations, pads in
// ONNX order top/left/bottom/right, group, rank); U is a grouped 1x1 convolution. All three run
// the one CUDA kernel of ../cuda/atrous_quad.cu (QuadLinear as a 1x1 convolution on 1x1 images).
// The ONNX parser maps a node to a creator by op type, plugin_version and plugin_namespace, and
// hands over the attributes that getFieldNames() lists.
#pragma once

#include "NvInferRuntime.h"

#include <cstdint>
#include <string>
#include <vector>

namespace qdeploy {

enum class QuadOp : int32_t { kConv = 0, kProduct = 1, kLinear = 2 };

// Node attributes; the NCHW ops use them all, QuadLinear only `rank`.
struct QuadAttributes {
    int32_t kernelShape[2]{1, 1};
    int32_t strides[2]{1, 1};
    int32_t dilations[2]{1, 1};
    int32_t pads[4]{0, 0, 0, 0};  // top, left, bottom, right
    int32_t group{1};
    int32_t rank{0};
};

class AtrousQuadPlugin : public nvinfer1::IPluginV3,
                         public nvinfer1::IPluginV3OneCore,
                         public nvinfer1::IPluginV3OneBuild,
                         public nvinfer1::IPluginV3OneRuntime {
public:
    AtrousQuadPlugin(QuadOp op, QuadAttributes const& attributes);
    AtrousQuadPlugin(AtrousQuadPlugin const& other);
    AtrousQuadPlugin& operator=(AtrousQuadPlugin const&) = delete;
    ~AtrousQuadPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                               nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                            nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* outputs,
                            int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t nbInputs() const noexcept;
    // An empty string when the static shapes fit the attributes, else what is wrong.
    std::string checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs) const;
    template <typename Desc>
    int32_t acceptShapes(char const* stage, Desc const* in, int32_t nbInputs, int32_t nbOutputs) const noexcept;
    void initFieldsToSerialize();

    QuadOp mOp;
    QuadAttributes mAttributes;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

// One creator per op type; the ONNX parser and deserialisation both create plugins through it
// (the serialised fields are the node attributes).
class AtrousQuadCreator : public nvinfer1::IPluginCreatorV3One {
public:
    explicit AtrousQuadCreator(QuadOp op);

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;

private:
    QuadOp mOp;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

// Parses and validates a node's attributes; throws std::invalid_argument naming the problem.
QuadAttributes parseAttributes(QuadOp op, nvinfer1::PluginFieldCollection const& fields);

}  // namespace qdeploy

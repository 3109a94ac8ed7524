// IPluginV3 plugins around atrousQuadForward; see atrous_quad_plugin.h.
#include "atrous_quad_plugin.h"

#include "atrous_quad.cuh"

#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>

#if defined(_WIN32)
#define QDEPLOY_PLUGIN_API __declspec(dllexport)
#else
#define QDEPLOY_PLUGIN_API __attribute__((visibility("default")))
#endif

using namespace nvinfer1;

namespace qdeploy {
namespace {

constexpr char const* kNamespace = "qdeploy";
constexpr char const* kVersion = "1";

char const* opName(QuadOp op) {
    switch (op) {
        case QuadOp::kConv: return "AtrousQuadConv";
        case QuadOp::kProduct: return "AtrousQuadProduct";
        case QuadOp::kLinear: return "QuadLinear";
    }
    return "unknown";
}

// Logging through TensorRT's logger once the library has been loaded with setLoggerFinder
// (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins); stderr before that.
std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder{nullptr};

void logError(std::string const& message) noexcept {
    try {
        std::string const text = "qdeploy plugins: " + message;
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
        if (logger != nullptr) {
            logger->log(ILogger::Severity::kERROR, text.c_str());
        } else {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    } catch (...) {
        std::fprintf(stderr, "qdeploy plugins: error (and out of memory while logging it)\n");
    }
}

// Attribute layout shared by getFieldNames (what the ONNX parser passes), serialisation and
// parsing: name, element count, offset into QuadAttributes. QuadLinear has `rank` only.
struct FieldSpec {
    char const* name;
    int32_t length;
    int32_t* (*member)(QuadAttributes&);
};

constexpr FieldSpec kConvFields[] = {
    {"kernel_shape", 2, [](QuadAttributes& a) { return a.kernelShape; }},
    {"strides", 2, [](QuadAttributes& a) { return a.strides; }},
    {"dilations", 2, [](QuadAttributes& a) { return a.dilations; }},
    {"pads", 4, [](QuadAttributes& a) { return a.pads; }},
    {"group", 1, [](QuadAttributes& a) { return &a.group; }},
    {"rank", 1, [](QuadAttributes& a) { return &a.rank; }},
};
constexpr int32_t kNbConvFields = static_cast<int32_t>(sizeof(kConvFields) / sizeof(kConvFields[0]));

// QuadLinear's fields are the last entry of kConvFields (rank).
FieldSpec const* fieldsOf(QuadOp op, int32_t& count) {
    count = op == QuadOp::kLinear ? 1 : kNbConvFields;
    return op == QuadOp::kLinear ? &kConvFields[kNbConvFields - 1] : kConvFields;
}

std::vector<int64_t> readInts(PluginField const& field) {
    if (field.data == nullptr || field.length < 0) {
        throw std::invalid_argument(std::string("attribute ") + field.name + " has no data");
    }
    std::vector<int64_t> values(static_cast<size_t>(field.length));
    for (int32_t i = 0; i < field.length; ++i) {
        if (field.type == PluginFieldType::kINT32) {
            values[i] = static_cast<int32_t const*>(field.data)[i];
        } else if (field.type == PluginFieldType::kINT64) {
            values[i] = static_cast<int64_t const*>(field.data)[i];
        } else {
            throw std::invalid_argument(std::string("attribute ") + field.name + " must be integers");
        }
    }
    return values;
}

std::string dimsString(Dims const& d) {
    std::string s = "[";
    for (int32_t i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + std::to_string(d.d[i]);
    return s + "]";
}

// A dimension that is known (>= 0) and differs from `expected`.
bool mismatch(int64_t actual, int64_t expected) { return actual >= 0 && actual != expected; }

}  // namespace

QuadAttributes parseAttributes(QuadOp op, PluginFieldCollection const& fc) {
    QuadAttributes a;
    int32_t count = 0;
    FieldSpec const* specs = fieldsOf(op, count);
    bool rankSeen = false;
    for (int32_t f = 0; f < fc.nbFields; ++f) {
        PluginField const& field = fc.fields[f];
        for (int32_t s = 0; s < count; ++s) {
            if (std::strcmp(field.name, specs[s].name) != 0) continue;
            std::vector<int64_t> const values = readInts(field);
            if (static_cast<int32_t>(values.size()) != specs[s].length) {
                throw std::invalid_argument(std::string("attribute ") + field.name + " needs " +
                                            std::to_string(specs[s].length) + " values, got " +
                                            std::to_string(values.size()));
            }
            int32_t* out = specs[s].member(a);
            for (int32_t i = 0; i < specs[s].length; ++i) {
                if (values[i] < INT32_MIN || values[i] > INT32_MAX) {
                    throw std::invalid_argument(std::string("attribute ") + field.name + " is out of range");
                }
                out[i] = static_cast<int32_t>(values[i]);
            }
            rankSeen = rankSeen || std::strcmp(field.name, "rank") == 0;
        }
    }
    if (!rankSeen || a.rank < 1) throw std::invalid_argument("attribute rank must be given and >= 1");
    for (int32_t i = 0; i < 2; ++i) {
        if (a.kernelShape[i] < 1 || a.strides[i] < 1 || a.dilations[i] < 1) {
            throw std::invalid_argument("kernel_shape, strides and dilations must be >= 1");
        }
    }
    for (int32_t pad : a.pads) {
        if (pad < 0) throw std::invalid_argument("pads must be >= 0");
    }
    if (a.group < 1 || a.rank % a.group != 0) {
        throw std::invalid_argument("group must be >= 1 and divide rank (" + std::to_string(a.rank) + ")");
    }
    if (a.rank / a.group > ATROUS_QUAD_MAX_RANK_PER_GROUP) {
        throw std::invalid_argument("rank / group = " + std::to_string(a.rank / a.group) + " exceeds the kernel's " +
                                    std::to_string(ATROUS_QUAD_MAX_RANK_PER_GROUP));
    }
    return a;
}

// ---------------------------------------------------------------------------------------------
// AtrousQuadPlugin

AtrousQuadPlugin::AtrousQuadPlugin(QuadOp op, QuadAttributes const& attributes) : mOp(op), mAttributes(attributes) {
    initFieldsToSerialize();
}

AtrousQuadPlugin::AtrousQuadPlugin(AtrousQuadPlugin const& other) : mOp(other.mOp), mAttributes(other.mAttributes) {
    initFieldsToSerialize();  // the fields point at this object's attributes, not the other's
}

void AtrousQuadPlugin::initFieldsToSerialize() {
    int32_t count = 0;
    FieldSpec const* specs = fieldsOf(mOp, count);
    mFields.clear();
    for (int32_t s = 0; s < count; ++s) {
        mFields.emplace_back(specs[s].name, specs[s].member(mAttributes), PluginFieldType::kINT32, specs[s].length);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

IPluginCapability* AtrousQuadPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
    switch (type) {
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* AtrousQuadPlugin::clone() noexcept {
    try {
        return new AtrousQuadPlugin(*this);
    } catch (std::exception const& e) {
        logError(std::string("clone: ") + e.what());
    }
    return nullptr;
}

char const* AtrousQuadPlugin::getPluginName() const noexcept { return opName(mOp); }
char const* AtrousQuadPlugin::getPluginVersion() const noexcept { return kVersion; }
char const* AtrousQuadPlugin::getPluginNamespace() const noexcept { return kNamespace; }

int32_t AtrousQuadPlugin::nbInputs() const noexcept { return mOp == QuadOp::kProduct ? 5 : 7; }

int32_t AtrousQuadPlugin::getNbOutputs() const noexcept { return 1; }

int32_t AtrousQuadPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                             int32_t nbInputs) const noexcept {
    if (nbOutputs != 1 || nbInputs != this->nbInputs()) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t AtrousQuadPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                                          int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                                          IExprBuilder& exprBuilder) noexcept {
    if (nbInputs != this->nbInputs() || nbOutputs != 1) return -1;
    DimsExprs const& x = inputs[0];
    DimsExprs& y = outputs[0];
    if (mOp == QuadOp::kLinear) {  // X's shape with the last axis W_U's output features
        if (x.nbDims < 2) return -1;
        y = x;
        y.d[x.nbDims - 1] = inputs[5].d[0];
        return 0;
    }
    if (x.nbDims != 4) {
        logError(std::string(opName(mOp)) + " needs NCHW input, got " + std::to_string(x.nbDims) + " dimensions");
        return -1;
    }
    y.nbDims = 4;
    y.d[0] = x.d[0];
    y.d[1] = mOp == QuadOp::kConv ? inputs[5].d[0] : inputs[1].d[0];
    for (int32_t axis = 0; axis < 2; ++axis) {
        // out = (in + pad_lo + pad_hi - span) // stride + 1, span = dilation * (kernel - 1) + 1
        int64_t const span = static_cast<int64_t>(mAttributes.dilations[axis]) * (mAttributes.kernelShape[axis] - 1) + 1;
        int64_t const shift = static_cast<int64_t>(mAttributes.pads[axis]) + mAttributes.pads[axis + 2] - span;
        IDimensionExpr const* shifted = exprBuilder.operation(DimensionOperation::kSUM, *x.d[2 + axis],
                                                              *exprBuilder.constant(shift));
        IDimensionExpr const* steps = exprBuilder.operation(DimensionOperation::kFLOOR_DIV, *shifted,
                                                            *exprBuilder.constant(mAttributes.strides[axis]));
        y.d[2 + axis] = exprBuilder.operation(DimensionOperation::kSUM, *steps, *exprBuilder.constant(1));
    }
    return 0;
}

bool AtrousQuadPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                                 int32_t nbOutputs) noexcept {
    if (nbInputs != this->nbInputs() || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs) return false;
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    return desc.type == inOut[0].desc.type;  // weights, biases and the output follow X
}

std::string AtrousQuadPlugin::checkShapes(Dims const* d, int32_t nbInputs) const {
    std::string const op = opName(mOp);
    if (nbInputs != this->nbInputs()) {
        return op + " takes " + std::to_string(this->nbInputs()) + " inputs, got " + std::to_string(nbInputs);
    }
    Dims const &x = d[0], &wa = d[1], &ba = d[2], &wb = d[3], &bb = d[4];
    bool const linear = mOp == QuadOp::kLinear;
    int32_t const rank = mAttributes.rank;
    if (wa.nbDims != wb.nbDims || std::memcmp(wa.d, wb.d, sizeof(wa.d[0]) * wa.nbDims) != 0) {
        return op + ": W_A " + dimsString(wa) + " and W_B " + dimsString(wb) + " differ";
    }
    if (wa.nbDims != (linear ? 2 : 4) || mismatch(wa.d[0], rank)) {
        return op + ": W_A " + dimsString(wa) + " must have " + (linear ? "2" : "4") + " dimensions and rank " +
               std::to_string(rank) + " rows";
    }
    if (ba.nbDims != 1 || bb.nbDims != 1 || mismatch(ba.d[0], rank) || mismatch(bb.d[0], rank)) {
        return op + ": B_A and B_B must be [" + std::to_string(rank) + "]";
    }
    if (linear) {
        if (x.nbDims < 2 || mismatch(x.d[x.nbDims - 1], wa.d[1])) {
            return op + ": X " + dimsString(x) + " must end with W_A's " + std::to_string(wa.d[1]) + " features";
        }
    } else {
        if (x.nbDims != 4) return op + ": X " + dimsString(x) + " must be NCHW";
        if (mismatch(x.d[1], static_cast<int64_t>(wa.d[1]) * mAttributes.group) ||
            mismatch(wa.d[2], mAttributes.kernelShape[0]) || mismatch(wa.d[3], mAttributes.kernelShape[1])) {
            return op + ": X " + dimsString(x) + " and W_A " + dimsString(wa) + " do not fit group " +
                   std::to_string(mAttributes.group) + " and kernel_shape";
        }
    }
    if (mOp == QuadOp::kProduct) return {};
    Dims const &wu = d[5], &bu = d[6];
    int64_t const rankPerGroup = linear ? rank : rank / mAttributes.group;
    bool const shapeOk = wu.nbDims == (linear ? 2 : 4) && !mismatch(wu.d[1], rankPerGroup) &&
                         (linear || (!mismatch(wu.d[2], 1) && !mismatch(wu.d[3], 1)));
    bool const groupsOk = linear || wu.d[0] < 0 || wu.d[0] % mAttributes.group == 0;
    if (!shapeOk || !groupsOk) {
        return op + ": W_U " + dimsString(wu) + " must be [Cout, " + std::to_string(rankPerGroup) +
               (linear ? "]" : ", 1, 1] with Cout divisible by group");
    }
    if (bu.nbDims != 1 || mismatch(bu.d[0], wu.d[0])) return op + ": B_U must be [" + std::to_string(wu.d[0]) + "]";
    return {};
}

namespace {
Dims const& dimsOf(DynamicPluginTensorDesc const& desc) { return desc.desc.dims; }
Dims const& dimsOf(PluginTensorDesc const& desc) { return desc.dims; }
}  // namespace

// configurePlugin (build time) and onShapeChange (run time) make the same check on
// different descriptor types: one input/output count and checkShapes on the inputs.
template <typename Desc>
int32_t AtrousQuadPlugin::acceptShapes(char const* stage, Desc const* in, int32_t nbInputs,
                                       int32_t nbOutputs) const noexcept {
    try {
        if (nbOutputs != 1 || nbInputs != this->nbInputs()) return -1;
        std::vector<Dims> dims(static_cast<size_t>(nbInputs));
        for (int32_t i = 0; i < nbInputs; ++i) dims[i] = dimsOf(in[i]);
        std::string const error = checkShapes(dims.data(), nbInputs);
        if (!error.empty()) {
            logError(error);
            return -1;
        }
        return 0;
    } catch (std::exception const& e) {
        logError(std::string(stage) + ": " + e.what());
    }
    return -1;
}

int32_t AtrousQuadPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                          DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
    return acceptShapes("configurePlugin", in, nbInputs, nbOutputs);
}

size_t AtrousQuadPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
                                          DynamicPluginTensorDesc const* /*outputs*/,
                                          int32_t /*nbOutputs*/) const noexcept {
    return 0;  // A(x), B(x) and their product stay in registers
}

int32_t AtrousQuadPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                                        int32_t nbOutputs) noexcept {
    return acceptShapes("onShapeChange", in, nbInputs, nbOutputs);
}

int32_t AtrousQuadPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                                  void const* const* inputs, void* const* outputs, void* /*workspace*/,
                                  cudaStream_t stream) noexcept {
    Dims const& x = inputDesc[0].dims;
    AtrousQuadParams p{};
    p.dtype = inputDesc[0].type == DataType::kHALF ? ATROUS_QUAD_FLOAT16 : ATROUS_QUAD_FLOAT32;
    p.rank = mAttributes.rank;
    if (mOp == QuadOp::kLinear) {  // every row of X is a 1x1 image with in_features channels
        int64_t rows = 1;
        for (int32_t i = 0; i + 1 < x.nbDims; ++i) rows *= x.d[i];
        if (rows > INT32_MAX) {
            logError("QuadLinear: more than 2^31 rows");
            return -1;
        }
        p.batch = static_cast<int32_t>(rows);
        p.in_channels = static_cast<int32_t>(x.d[x.nbDims - 1]);
        p.in_height = p.in_width = 1;
        p.out_channels = static_cast<int32_t>(inputDesc[5].dims.d[0]);
        p.groups = 1;
        p.kernel_h = p.kernel_w = p.stride_h = p.stride_w = p.dilation_h = p.dilation_w = 1;
    } else {
        p.batch = static_cast<int32_t>(x.d[0]);
        p.in_channels = static_cast<int32_t>(x.d[1]);
        p.in_height = static_cast<int32_t>(x.d[2]);
        p.in_width = static_cast<int32_t>(x.d[3]);
        p.out_channels = mOp == QuadOp::kConv ? static_cast<int32_t>(inputDesc[5].dims.d[0]) : p.rank;
        p.groups = mAttributes.group;
        p.kernel_h = mAttributes.kernelShape[0];
        p.kernel_w = mAttributes.kernelShape[1];
        p.stride_h = mAttributes.strides[0];
        p.stride_w = mAttributes.strides[1];
        p.dilation_h = mAttributes.dilations[0];
        p.dilation_w = mAttributes.dilations[1];
        p.pad_top = mAttributes.pads[0];
        p.pad_left = mAttributes.pads[1];
        p.pad_bottom = mAttributes.pads[2];
        p.pad_right = mAttributes.pads[3];
    }
    bool const hasU = mOp != QuadOp::kProduct;
    int const status = atrousQuadForward(&p, inputs[0], inputs[1], inputs[2], inputs[3], inputs[4],
                                         hasU ? inputs[5] : nullptr, hasU ? inputs[6] : nullptr, outputs[0], stream);
    if (status != ATROUS_QUAD_SUCCESS) {
        logError(std::string(opName(mOp)) + ": " + atrousQuadStatusString(status));
        return -1;
    }
    return 0;
}

IPluginV3* AtrousQuadPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept { return clone(); }

PluginFieldCollection const* AtrousQuadPlugin::getFieldsToSerialize() noexcept { return &mFieldCollection; }

// ---------------------------------------------------------------------------------------------
// AtrousQuadCreator

AtrousQuadCreator::AtrousQuadCreator(QuadOp op) : mOp(op) {
    int32_t count = 0;
    FieldSpec const* specs = fieldsOf(op, count);
    for (int32_t s = 0; s < count; ++s) {
        mFields.emplace_back(specs[s].name, nullptr, PluginFieldType::kINT32, specs[s].length);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* AtrousQuadCreator::getPluginName() const noexcept { return opName(mOp); }
char const* AtrousQuadCreator::getPluginVersion() const noexcept { return kVersion; }
char const* AtrousQuadCreator::getPluginNamespace() const noexcept { return kNamespace; }
PluginFieldCollection const* AtrousQuadCreator::getFieldNames() noexcept { return &mFieldCollection; }

IPluginV3* AtrousQuadCreator::createPlugin(char const* name, PluginFieldCollection const* fc,
                                           TensorRTPhase /*phase*/) noexcept {
    try {
        if (fc == nullptr) throw std::invalid_argument("no attributes");
        return new AtrousQuadPlugin(mOp, parseAttributes(mOp, *fc));
    } catch (std::exception const& e) {
        logError(std::string(opName(mOp)) + " node '" + (name ? name : "") + "': " + e.what());
    }
    return nullptr;
}

}  // namespace qdeploy

// Library entry points for IPluginRegistry::loadLibrary, trt.get_plugin_registry().load_library(),
// trtexec --dynamicPlugins / --setPluginsToSerialize and Triton Inference Server.
extern "C" QDEPLOY_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    std::lock_guard<std::mutex> lock(qdeploy::gLoggerMutex);
    qdeploy::gLoggerFinder = finder;
}

extern "C" QDEPLOY_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static qdeploy::AtrousQuadCreator conv(qdeploy::QuadOp::kConv);
    static qdeploy::AtrousQuadCreator product(qdeploy::QuadOp::kProduct);
    static qdeploy::AtrousQuadCreator linear(qdeploy::QuadOp::kLinear);
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&conv, &product, &linear};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

// A stand-in for TensorRT's IExprBuilder, so getOutputShapes can be tested without libnvinfer:
// IExprBuilder / IDimensionExpr forward to the protected mImpl (nvinfer1::apiv::VExprBuilder /
// VDimensionExpr, NvInferImpl.h), which these classes point at their own implementations.
// Expressions are constants or symbols ("B", "(B*S)"); operations on two constants fold.
#pragma once

#include <NvInferRuntime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace vq2trt::trt::testing {

class TestDimExpr final : public nvinfer1::IDimensionExpr {
 public:
  TestDimExpr(bool constant, int64_t value, std::string text) : impl_(constant, value), text_(std::move(text)) {
    mImpl = &impl_;
  }
  ~TestDimExpr() noexcept override = default;
  const std::string& text() const { return text_; }

 private:
  class Impl final : public nvinfer1::apiv::VDimensionExpr {
   public:
    Impl(bool constant, int64_t value) : constant_(constant), value_(value) {}
    bool isConstant() const override { return constant_; }
    int64_t getConstantValue() const override { return constant_ ? value_ : -1; }
    bool isSizeTensor() const override { return false; }

   private:
    bool constant_;
    int64_t value_;
  };
  Impl impl_;
  std::string text_;
};

class TestExprBuilder final : public nvinfer1::IExprBuilder {
 public:
  TestExprBuilder() : impl_(this) { mImpl = &impl_; }
  ~TestExprBuilder() noexcept override = default;

  const TestDimExpr* symbol(const std::string& name) { return add(false, -1, name); }
  const TestDimExpr* constant_expr(int64_t v) { return add(true, v, std::to_string(v)); }
  static std::string text(const nvinfer1::IDimensionExpr* e) {
    return e == nullptr ? "null" : static_cast<const TestDimExpr*>(e)->text();
  }

 private:
  const TestDimExpr* add(bool constant, int64_t value, const std::string& text) {
    exprs_.push_back(std::make_unique<TestDimExpr>(constant, value, text));
    return exprs_.back().get();
  }

  class Impl final : public nvinfer1::apiv::VExprBuilder {
   public:
    explicit Impl(TestExprBuilder* owner) : owner_(owner) {}
    const nvinfer1::IDimensionExpr* constant(int64_t value) override { return owner_->constant_expr(value); }
    const nvinfer1::IDimensionExpr* operation(nvinfer1::DimensionOperation op, const nvinfer1::IDimensionExpr& a,
                                              const nvinfer1::IDimensionExpr& b) override {
      using Op = nvinfer1::DimensionOperation;
      static const char* names[] = {"+", "*", " max ", " min ", "-", "==", "<", "//", "ceil/"};
      const int i = int(op);
      if (i < 0 || i > 8) return nullptr;
      if (!a.isConstant() || !b.isConstant())
        return owner_->symbol("(" + text(&a) + names[i] + text(&b) + ")");
      const int64_t x = a.getConstantValue(), y = b.getConstantValue();
      if ((op == Op::kFLOOR_DIV || op == Op::kCEIL_DIV) && y == 0) return nullptr;
      int64_t r = 0;
      switch (op) {
        case Op::kSUM: r = x + y; break;
        case Op::kPROD: r = x * y; break;
        case Op::kMAX: r = std::max(x, y); break;
        case Op::kMIN: r = std::min(x, y); break;
        case Op::kSUB: r = x - y; break;
        case Op::kEQUAL: r = x == y; break;
        case Op::kLESS: r = x < y; break;
        case Op::kFLOOR_DIV: r = x / y - ((x % y != 0) && ((x < 0) != (y < 0))); break;
        case Op::kCEIL_DIV: r = x / y + ((x % y != 0) && ((x < 0) == (y < 0))); break;
      }
      return owner_->constant_expr(r);
    }
    const nvinfer1::IDimensionExpr* declareSizeTensor(int32_t, const nvinfer1::IDimensionExpr&,
                                                      const nvinfer1::IDimensionExpr&) override {
      return nullptr;
    }

   private:
    TestExprBuilder* owner_;
  };

  Impl impl_;
  std::vector<std::unique_ptr<TestDimExpr>> exprs_;
};

}  // namespace vq2trt::trt::testing

// conv2d: 3x3 single-channel f32 convolution with "same" zero padding.
//
// output[r][c] = sum over dr, dc in {-1, 0, 1} of
//                input[r + dr][c + dc] * weights[dr + 1][dc + 1]
// with input outside [0, height) x [0, width) read as 0 (cross-correlation, as in deep
// learning frameworks: the weights are not flipped). input and output are height x width,
// row-major; weights is 3x3 row-major.
//
// Parameters: input, weights (.u64, read), output (.u64, written), height, width (int, .u32).
// Launch: 2-D, c = blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y * blockDim.y +
// threadIdx.y; any block shape, e.g. block (16,16,1), grid (ceil(width / 16),
// ceil(height / 16), 1). The z dimension only repeats the same (idempotent) work.

extern "C" __global__ void conv2d(const float* input, const float* weights, float* output,
                                  int height, int width) {
    const long long c = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long r = static_cast<long long>(blockIdx.y) * blockDim.y + threadIdx.y;
    if (r >= height || c >= width) {
        return;
    }
    float acc = 0.0f;
    for (int dr = -1; dr <= 1; ++dr) {
        for (int dc = -1; dc <= 1; ++dc) {
            const long long rr = r + dr;
            const long long cc = c + dc;
            if (rr >= 0 && rr < height && cc >= 0 && cc < width) {
                acc = fmaf(input[rr * width + cc], weights[(dr + 1) * 3 + (dc + 1)], acc);
            }
        }
    }
    output[r * width + c] = acc;
}

// Integer arithmetic nvcc lowers in many ways: division by constants (mul.hi), 64-bit
// division, bit counts and reversal, high products, shifts, min/max/abs.
extern "C" __global__ void int_math(const int* a, const int* b, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    int x = a[i];
    int y = b[i];
    int r = x / y + x % y;
    r ^= x / 7 + (int)((unsigned)x % 13u);
    r += __popc(x) + __clz(y) + (int)__brev((unsigned)x);
    r += __mulhi(x, y) + (int)__umulhi((unsigned)x, (unsigned)y);
    r += min(x, y) * max(x, y) + abs(x) + (x >> 3) + (int)((unsigned)y >> 5);
    long long w = (long long)x * y;
    r += (int)(w >> 17) + (int)(w / 1000003LL);
    out[i] = r;
}

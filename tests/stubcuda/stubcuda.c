/* stubcuda.c: a stand-in libcuda.so.1 for the driver-binding ABI test (no GPU needed).
 *
 * It implements the driver entry points that src/Runtime/Native/CudaApi.cs binds, over host memory,
 * and records what it receives so the test can check that arguments arrive byte-exact:
 *   - device memory is malloc'd host memory (copies and memsets really happen);
 *   - a "module image" is text: "STUBMODULE\n" then one line per kernel, "kernel NAME SIZE0 SIZE1 ...",
 *     the byte size of each parameter (what a real cubin's metadata tells the real driver); anything else
 *     is rejected with CUDA_ERROR_INVALID_IMAGE and a message in the JIT error log buffer;
 *   - cuLaunchKernel copies each parameter's bytes into a launch record; during stream capture the
 *     record goes into the graph instead, and cuGraphLaunch replays the graph's records into the log;
 *   - cuLaunchKernelEx reads its CUlaunchConfig / CUlaunchAttribute, declared below exactly as cuda.h (12.x) declares
 *     them, and records whether the launch asked for programmatic stream serialization;
 *   - cuLaunchCooperativeKernel records its launch with the cooperative flag;
 *   - cuCtxSetLimit accepts CU_LIMIT_PERSISTING_L2_CACHE_SIZE up to the maximum it reports (attribute 108), read back by
 *     stub_last_limit / stub_last_limit_value;
 *   - the programmatic-dependent-launch probe's PTX (".entry qwen3cuda_pdl_probe") loads as a kernel without
 *     parameters; its graph replays are counted (stub_pdl_probe_runs), not logged;
 *   - stub_launch_count / stub_get_launch / stub_last_func_attribute read the records back.
 * Build: gcc -shared -fPIC -o libcuda.so.1 stubcuda.c
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

typedef int CUresult;
enum { OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, INVALID_DEVICE = 101,
       INVALID_IMAGE = 200, INVALID_HANDLE = 400, NOT_FOUND = 500 };

#define MAX_PARAMS 16
#define MAX_PARAM_BYTES 256
#define MAX_LAUNCHES 256
#define MAX_KERNELS 32

typedef struct {
    char kernel[64];
    uint32_t grid[3], block[3], shared_bytes;
    uint64_t stream;
    int32_t param_count;
    int32_t param_size[MAX_PARAMS];
    uint8_t param_bytes[MAX_PARAMS][MAX_PARAM_BYTES];
    int32_t programmatic;            /* cuLaunchKernelEx with PROGRAMMATIC_STREAM_SERIALIZATION = 1 */
    int32_t cooperative;             /* cuLaunchCooperativeKernel */
} stub_launch;

/* cuda.h (CUDA 12.x), the parts cuLaunchKernelEx reads */
typedef enum { CU_LAUNCH_ATTRIBUTE_IGNORE = 0, CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6 } CUlaunchAttributeID;
typedef union {
    char pad[64];
    struct { void *base_ptr; size_t num_bytes; float hitRatio; int hitProp, missProp; } accessPolicyWindow;
    int programmaticStreamSerializationAllowed;
} CUlaunchAttributeValue;
typedef struct {
    CUlaunchAttributeID id;
    char pad[8 - sizeof(CUlaunchAttributeID)];
    CUlaunchAttributeValue value;
} CUlaunchAttribute;
typedef struct {
    unsigned int gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
    void *hStream;
    CUlaunchAttribute *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;
_Static_assert(sizeof(CUlaunchAttribute) == 72, "CUlaunchAttribute is 72 bytes on LP64");
_Static_assert(sizeof(CUlaunchConfig) == 56, "CUlaunchConfig is 56 bytes on LP64");

typedef struct { char name[64]; int nparams; int sizes[MAX_PARAMS]; int max_dynamic_smem; } stub_kernel;
typedef struct { stub_kernel kernels[MAX_KERNELS]; int count; } stub_module;
typedef struct { stub_launch launches[MAX_LAUNCHES]; int count; } stub_graph;

static int initialised;
static stub_launch launches[MAX_LAUNCHES];
static int launch_count;
static uint64_t capturing_stream;
static stub_graph *capture_graph;
static int last_attr_value = -1;
static int pdl_probe_runs;

/* ---- inspection API for the test ---- */
int stub_launch_count(void) { return launch_count; }
int stub_get_launch(int i, stub_launch *out) { if (i < 0 || i >= launch_count) return 1; *out = launches[i]; return 0; }
int stub_last_func_attribute(void) { return last_attr_value; }
int stub_launch_record_size(void) { return (int)sizeof(stub_launch); }
int stub_pdl_probe_runs(void) { return pdl_probe_runs; }
static int last_limit = -1;
static size_t last_limit_value;
int stub_last_limit(void) { return last_limit; }
size_t stub_last_limit_value(void) { return last_limit_value; }
CUresult cuCtxSetLimit(int limit, size_t value)
{
    if (limit != 0x06 || value > 0x2580000) return INVALID_VALUE;   /* only the persisting-L2 limit, at most the maximum */
    last_limit = limit;
    last_limit_value = value;
    return OK;
}

/* ---- init, errors, devices ---- */
CUresult cuInit(unsigned int flags) { if (flags != 0) return INVALID_VALUE; initialised = 1; return OK; }
CUresult cuDriverGetVersion(int *v) { *v = 12040; return OK; }
CUresult cuDeviceGetCount(int *n) { if (!initialised) return NOT_INITIALIZED; *n = 1; return OK; }
CUresult cuDeviceGet(int *d, int ordinal) { if (ordinal != 0) return INVALID_DEVICE; *d = 0; return OK; }
CUresult cuDeviceGetName(char *name, int len, int d) { (void)d; snprintf(name, (size_t)len, "Qwen3Cuda stub device"); return OK; }
CUresult cuDeviceTotalMem_v2(size_t *bytes, int d) { (void)d; *bytes = (size_t)80 << 30; return OK; }
CUresult cuDeviceGetAttribute(int *v, int attr, int d)
{
    (void)d;
    switch (attr) {
    case 1: *v = 1024; return OK;            /* max threads per block */
    case 8: *v = 48 * 1024; return OK;       /* shared per block */
    case 10: *v = 32; return OK;             /* warp size */
    case 16: *v = 132; return OK;            /* SMs */
    case 36: *v = 2619000; return OK;        /* memory clock, kHz (H100 SXM) */
    case 37: *v = 5120; return OK;           /* memory bus width, bits */
    case 75: *v = 9; return OK;              /* major */
    case 76: *v = 0; return OK;              /* minor */
    case 81: *v = 228 * 1024; return OK;     /* shared per SM */
    case 97: *v = 227 * 1024; return OK;     /* shared per block opt-in */
    case 108: *v = 0x2580000; return OK;     /* max persisting L2, 37.5 MiB (an H100's 50 MB L2 x 3/4) */
    default: return INVALID_VALUE;
    }
}
CUresult cuGetErrorName(CUresult e, const char **s)
{
    switch (e) {
    case OK: *s = "CUDA_SUCCESS"; return OK;
    case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; return OK;
    case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; return OK;
    case NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; return OK;
    case INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; return OK;
    case INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; return OK;
    case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; return OK;
    default: *s = 0; return INVALID_VALUE;
    }
}
CUresult cuGetErrorString(CUresult e, const char **s)
{
    switch (e) {
    case OUT_OF_MEMORY: *s = "out of memory"; return OK;
    case INVALID_IMAGE: *s = "device kernel image is invalid"; return OK;
    case NOT_FOUND: *s = "named symbol not found"; return OK;
    case INVALID_VALUE: *s = "invalid argument"; return OK;
    default: *s = "stub error"; return OK;
    }
}

/* ---- contexts ---- */
static int ctx_token;
CUresult cuDevicePrimaryCtxRetain(void **ctx, int d) { (void)d; *ctx = &ctx_token; return OK; }
CUresult cuDevicePrimaryCtxRelease_v2(int d) { (void)d; return OK; }
CUresult cuCtxSetCurrent(void *ctx) { return ctx == &ctx_token || ctx == 0 ? OK : INVALID_VALUE; }
CUresult cuCtxSynchronize(void) { return OK; }

/* ---- memory ---- */
CUresult cuMemAlloc_v2(uint64_t *p, size_t bytes)
{
    if (bytes > ((size_t)1 << 40)) return OUT_OF_MEMORY;
    void *m = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!m) return OUT_OF_MEMORY;
    *p = (uint64_t)(uintptr_t)m;
    return OK;
}
CUresult cuMemFree_v2(uint64_t p) { free((void *)(uintptr_t)p); return OK; }
CUresult cuMemGetInfo_v2(size_t *f, size_t *t) { *t = (size_t)80 << 30; *f = (size_t)79 << 30; return OK; }
CUresult cuMemAllocHost_v2(void **p, size_t bytes) { *p = malloc(bytes); return *p ? OK : OUT_OF_MEMORY; }
CUresult cuMemFreeHost(void *p) { free(p); return OK; }
CUresult cuMemcpyHtoD_v2(uint64_t dst, const void *src, size_t n) { memcpy((void *)(uintptr_t)dst, src, n); return OK; }
CUresult cuMemcpyDtoH_v2(void *dst, uint64_t src, size_t n) { memcpy(dst, (void *)(uintptr_t)src, n); return OK; }
CUresult cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t n, void *s) { (void)s; return cuMemcpyHtoD_v2(dst, src, n); }
CUresult cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t n, void *s) { (void)s; return cuMemcpyDtoH_v2(dst, src, n); }
CUresult cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t n, void *s) { (void)s; memmove((void *)(uintptr_t)dst, (void *)(uintptr_t)src, n); return OK; }
CUresult cuMemsetD8Async(uint64_t dst, unsigned char v, size_t n, void *s) { (void)s; memset((void *)(uintptr_t)dst, v, n); return OK; }

/* ---- modules ---- */
CUresult cuModuleLoadDataEx(stub_module **mod, const void *image, unsigned n, int *options, void **values)
{
    const char *text = (const char *)image;
    if (strncmp(text, ".version", 8) == 0 && strstr(text, ".entry qwen3cuda_pdl_probe(")) {
        stub_module *m = calloc(1, sizeof *m);
        snprintf(m->kernels[0].name, sizeof m->kernels[0].name, "qwen3cuda_pdl_probe");
        m->count = 1;
        *mod = m;
        return OK;
    }
    if (strncmp(text, "STUBMODULE\n", 11) != 0) {
        for (unsigned i = 0; i + 1 < n; i++)
            if (options[i] == 5 && options[i + 1] == 6)      /* error log buffer + its size */
                snprintf((char *)values[i], (size_t)(uintptr_t)values[i + 1], "stub: image is not a STUBMODULE");
        return INVALID_IMAGE;
    }
    stub_module *m = calloc(1, sizeof *m);
    const char *line = text + 11;
    while (*line && m->count < MAX_KERNELS) {
        stub_kernel *k = &m->kernels[m->count];
        int used = 0;
        if (sscanf(line, "kernel %63s%n", k->name, &used) == 1) {
            const char *p = line + used;
            int size, more;
            while (k->nparams < MAX_PARAMS && sscanf(p, " %d%n", &size, &more) == 1) { k->sizes[k->nparams++] = size; p += more; }
            m->count++;
        }
        const char *nl = strchr(line, '\n');
        if (!nl) break;
        line = nl + 1;
    }
    *mod = m;
    return OK;
}
CUresult cuModuleUnload(stub_module *m) { free(m); return OK; }
CUresult cuModuleGetFunction(stub_kernel **f, stub_module *m, const char *name)
{
    for (int i = 0; i < m->count; i++)
        if (strcmp(m->kernels[i].name, name) == 0) { *f = &m->kernels[i]; return OK; }
    return NOT_FOUND;
}
CUresult cuFuncGetAttribute(int *v, int attr, stub_kernel *k)
{
    switch (attr) {
    case 0: *v = 1024; return OK;
    case 1: *v = 128; return OK;
    case 2: *v = 0; return OK;
    case 3: *v = 0; return OK;
    case 4: *v = 40; return OK;
    case 8: *v = k->max_dynamic_smem; return OK;
    default: return INVALID_VALUE;
    }
}
CUresult cuFuncSetAttribute(stub_kernel *k, int attr, int value)
{
    if (attr != 8) return INVALID_VALUE;
    k->max_dynamic_smem = value;
    last_attr_value = value;
    return OK;
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, stub_kernel *k, int block_size, size_t smem)
{
    (void)k; (void)smem;
    *blocks = block_size > 0 ? 2048 / block_size : 0;
    return OK;
}
static CUresult record_launch(stub_kernel *k, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                              unsigned smem, void *stream, void **params, int programmatic, int cooperative)
{
    stub_launch *rec;
    if (capture_graph && (uint64_t)(uintptr_t)stream == capturing_stream) {
        if (capture_graph->count >= MAX_LAUNCHES) return INVALID_VALUE;
        rec = &capture_graph->launches[capture_graph->count++];
    } else {
        if (launch_count >= MAX_LAUNCHES) return INVALID_VALUE;
        rec = &launches[launch_count++];
    }
    memset(rec, 0, sizeof *rec);
    snprintf(rec->kernel, sizeof rec->kernel, "%s", k->name);
    rec->grid[0] = gx; rec->grid[1] = gy; rec->grid[2] = gz;
    rec->block[0] = bx; rec->block[1] = by; rec->block[2] = bz;
    rec->shared_bytes = smem;
    rec->stream = (uint64_t)(uintptr_t)stream;
    rec->param_count = k->nparams;
    for (int i = 0; i < k->nparams; i++) {
        rec->param_size[i] = k->sizes[i];
        memcpy(rec->param_bytes[i], params[i], (size_t)k->sizes[i] < MAX_PARAM_BYTES ? (size_t)k->sizes[i] : MAX_PARAM_BYTES);
    }
    rec->programmatic = programmatic;
    rec->cooperative = cooperative;
    return OK;
}
CUresult cuLaunchKernel(stub_kernel *k, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, void *stream, void **params, void **extra)
{
    if (extra) return INVALID_VALUE;
    return record_launch(k, gx, gy, gz, bx, by, bz, smem, stream, params, 0, 0);
}
CUresult cuLaunchCooperativeKernel(stub_kernel *k, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                   unsigned smem, void *stream, void **params)
{
    return record_launch(k, gx, gy, gz, bx, by, bz, smem, stream, params, 0, 1);
}
CUresult cuLaunchKernelEx(const CUlaunchConfig *c, stub_kernel *k, void **params, void **extra)
{
    if (extra || !c || (c->numAttrs && !c->attrs)) return INVALID_VALUE;
    int programmatic = 0;
    for (unsigned i = 0; i < c->numAttrs; i++) {
        if (c->attrs[i].id == CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
            programmatic = c->attrs[i].value.programmaticStreamSerializationAllowed;
        else if (c->attrs[i].id != CU_LAUNCH_ATTRIBUTE_IGNORE) return INVALID_VALUE;
    }
    return record_launch(k, c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, c->blockDimY, c->blockDimZ,
                         c->sharedMemBytes, c->hStream, params, programmatic, 0);
}

/* ---- streams, events ---- */
static uintptr_t next_handle = 0x1000;
CUresult cuStreamCreate(void **s, unsigned flags) { (void)flags; *s = (void *)(next_handle += 16); return OK; }
CUresult cuStreamDestroy_v2(void *s) { (void)s; return OK; }
CUresult cuStreamSynchronize(void *s) { (void)s; return OK; }
CUresult cuStreamWaitEvent(void *s, void *e, unsigned f) { (void)s; (void)e; return f == 0 ? OK : INVALID_VALUE; }
typedef struct { int recorded; } stub_event;
CUresult cuEventCreate(stub_event **e, unsigned flags) { (void)flags; *e = calloc(1, sizeof(stub_event)); return OK; }
CUresult cuEventDestroy_v2(stub_event *e) { free(e); return OK; }
CUresult cuEventRecord(stub_event *e, void *s) { (void)s; e->recorded = 1; return OK; }
CUresult cuEventSynchronize(stub_event *e) { return e->recorded ? OK : INVALID_VALUE; }
CUresult cuEventElapsedTime(float *ms, stub_event *a, stub_event *b) { *ms = a->recorded && b->recorded ? 1.5f : 0.f; return a->recorded && b->recorded ? OK : INVALID_VALUE; }

/* ---- graphs ---- */
CUresult cuStreamBeginCapture_v2(void *s, int mode)
{
    if (capture_graph || mode != 1) return INVALID_VALUE;
    capture_graph = calloc(1, sizeof *capture_graph);
    capturing_stream = (uint64_t)(uintptr_t)s;
    return OK;
}
CUresult cuStreamEndCapture(void *s, stub_graph **g)
{
    if (!capture_graph || (uint64_t)(uintptr_t)s != capturing_stream) return INVALID_VALUE;
    *g = capture_graph;
    capture_graph = 0;
    capturing_stream = 0;
    return OK;
}
CUresult cuGraphGetNodes(stub_graph *g, void **nodes, size_t *count)
{
    if (nodes) for (int i = 0; i < g->count && (size_t)i < *count; i++) nodes[i] = &g->launches[i];
    *count = (size_t)g->count;
    return OK;
}
CUresult cuGraphNodeGetType(void *node, int *type) { (void)node; *type = 0; return OK; }
typedef struct { stub_graph graph; } stub_exec;
CUresult cuGraphInstantiateWithFlags(stub_exec **e, stub_graph *g, unsigned long long flags)
{
    if (flags) return INVALID_VALUE;
    *e = malloc(sizeof **e);
    (*e)->graph = *g;
    return OK;
}
CUresult cuGraphExecUpdate(stub_exec *e, stub_graph *g, void **err_node, int *result)
{
    *err_node = 0;
    if (e->graph.count != g->count) { *result = 1; return 910; }
    e->graph = *g;
    *result = 0;
    return OK;
}
CUresult cuGraphLaunch(stub_exec *e, void *s)
{
    (void)s;
    for (int i = 0; i < e->graph.count && launch_count < MAX_LAUNCHES; i++) {
        if (strcmp(e->graph.launches[i].kernel, "qwen3cuda_pdl_probe") == 0) pdl_probe_runs++;
        else launches[launch_count++] = e->graph.launches[i];
    }
    return OK;
}
CUresult cuGraphExecDestroy(stub_exec *e) { free(e); return OK; }
CUresult cuGraphDestroy(stub_graph *g) { free(g); return OK; }

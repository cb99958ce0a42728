/* Classify a photo with a bundle compiled by `edgerun compile` (an ImageNet model with one (1, 3, H, W)
 * float input, e.g. MobileNetV2), through the edgerun C runtime:
 *
 *     classify model.erb photo.ppm [labels.txt] [--threads N]
 *
 * The photo is a binary PPM (P6, RGB) or PGM (P5, grey) with 8-bit samples. It is preprocessed as
 * `edgerun run` does (edgerun/zoo/images.py, preset "imagenet"): the shorter side resized to
 * round(max(H, W) * 256 / 224) with an antialiased bilinear (triangle) filter, a centred H x W crop,
 * pixels scaled to 0..1, minus the ImageNet mean, divided by its std, channels first. Prints the top-5
 * softmax probabilities with their labels, then the memory bill: the arena, the weights read in place
 * and the process's peak RSS. */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "edgerun.h"

#define TOP 5
#define MAX_LABELS 1000
#define MAX_SIDE 16384

static const float MEAN[3] = {0.485f, 0.456f, 0.406f};
static const float STD[3] = {0.229f, 0.224f, 0.225f};

typedef struct {
    int width, height;
    unsigned char *rgb; /* height * width * 3 */
} image;

/* ------------------------------------------------------------------ PPM / PGM */
static int skip_space_and_comments(FILE *in)
{
    int c;
    while ((c = fgetc(in)) != EOF) {
        if (c == '#') {
            while ((c = fgetc(in)) != EOF && c != '\n') {}
        } else if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            ungetc(c, in);
            return 0;
        }
    }
    return -1;
}

static int read_number(FILE *in, int *value)
{
    if (skip_space_and_comments(in)) return -1;
    return fscanf(in, "%d", value) == 1 ? 0 : -1;
}

static int read_netpbm(const char *path, image *img)
{
    FILE *in = fopen(path, "rb");
    char magic[3] = {0};
    int maxval, channels;
    if (!in) return fprintf(stderr, "classify: cannot open %s\n", path), -1;
    if (fread(magic, 1, 2, in) != 2 || magic[0] != 'P' || (magic[1] != '6' && magic[1] != '5') ||
        read_number(in, &img->width) || read_number(in, &img->height) || read_number(in, &maxval) ||
        fgetc(in) == EOF) {
        fclose(in);
        return fprintf(stderr, "classify: %s is not a binary PPM (P6) or PGM (P5) image\n", path), -1;
    }
    if (img->width < 1 || img->height < 1 || img->width > MAX_SIDE || img->height > MAX_SIDE || maxval != 255) {
        fclose(in);
        return fprintf(stderr, "classify: %s: %dx%d, maxval %d: need 1..%d pixels a side and 8-bit samples\n",
                       path, img->width, img->height, maxval, MAX_SIDE), -1;
    }
    channels = magic[1] == '6' ? 3 : 1;
    size_t pixels = (size_t)img->width * img->height;
    img->rgb = (unsigned char *)malloc(pixels * 3);
    if (!img->rgb || fread(img->rgb, channels, pixels, in) != pixels) {
        fclose(in);
        free(img->rgb);
        return fprintf(stderr, "classify: %s is truncated\n", path), -1;
    }
    fclose(in);
    for (size_t i = pixels; channels == 1 && i-- > 0;) /* grey to RGB, from the end backwards */
        img->rgb[3 * i] = img->rgb[3 * i + 1] = img->rgb[3 * i + 2] = img->rgb[i];
    return 0;
}

/* ------------------------------------------------------------------ preprocessing */
/* Output index o of a resize from `in` to `out` samples reads inputs [first[o], first[o] + taps) with
 * weights[o * max_taps ...]: a triangle filter widened by the scale when downscaling (antialiasing),
 * normalised to sum 1 (edgerun.zoo.images._resize_weights). */
typedef struct {
    int max_taps;
    int *first, *taps;
    float *weights;
} resize_table;

static int make_table(int in, int out, resize_table *t)
{
    double scale = (double)in / out, support = scale > 1.0 ? scale : 1.0;
    t->max_taps = (int)ceil(2.0 * support) + 4;
    t->first = (int *)calloc((size_t)out, sizeof(int));
    t->taps = (int *)calloc((size_t)out, sizeof(int));
    t->weights = (float *)calloc((size_t)out * t->max_taps, sizeof(float));
    double *w = (double *)calloc((size_t)t->max_taps, sizeof(double));
    if (!t->first || !t->taps || !t->weights || !w) return free(w), -1;
    for (int o = 0; o < out; o++) {
        double center = (o + 0.5) * scale, sum = 0.0;
        int lo = (int)floor(center - support - 0.5), hi = (int)ceil(center + support - 0.5), n = 0;
        if (lo < 0) lo = 0;
        if (hi > in - 1) hi = in - 1;
        for (int i = lo; i <= hi && n < t->max_taps; i++) {
            double weight = 1.0 - fabs(i + 0.5 - center) / support;
            w[n] = weight > 0.0 ? weight : 0.0;
            sum += w[n++];
        }
        t->first[o] = lo;
        t->taps[o] = n;
        for (int i = 0; i < n; i++) t->weights[(size_t)o * t->max_taps + i] = (float)(w[i] / sum);
    }
    free(w);
    return 0;
}

static void free_table(resize_table *t)
{
    free(t->first);
    free(t->taps);
    free(t->weights);
}

/* (1, 3, height, width) float input from the photo, as edgerun.zoo.images.preprocess (imagenet). */
static int preprocess(const image *img, int height, int width, float *out)
{
    int resize = (int)lround((height > width ? height : width) * 256.0 / 224.0);
    int rh, rw; /* the shorter side to `resize`, the longer one scaled and truncated */
    if (img->height <= img->width) {
        rh = resize;
        rw = (int)(resize * (double)img->width / img->height);
    } else {
        rw = resize;
        rh = (int)(resize * (double)img->height / img->width);
    }
    if (rh < 1) rh = 1;
    if (rw < 1) rw = 1;
    if (rh < height || rw < width)
        return fprintf(stderr, "classify: cannot crop %dx%d from the image resized to %dx%d\n", height, width, rh, rw), -1;
    int top = (int)rint((rh - height) / 2.0), left = (int)rint((rw - width) / 2.0);
    resize_table rows, cols;
    memset(&rows, 0, sizeof rows);
    memset(&cols, 0, sizeof cols);
    if (make_table(img->height, rh, &rows) || make_table(img->width, rw, &cols)) {
        free_table(&rows);
        free_table(&cols);
        return fprintf(stderr, "classify: out of memory\n"), -1;
    }
    for (int y = 0; y < height; y++) {
        int oy = top + y;
        const float *wy = rows.weights + (size_t)oy * rows.max_taps;
        for (int x = 0; x < width; x++) {
            int ox = left + x;
            const float *wx = cols.weights + (size_t)ox * cols.max_taps;
            float sum[3] = {0.0f, 0.0f, 0.0f};
            for (int i = 0; i < rows.taps[oy]; i++) {
                const unsigned char *row = img->rgb + ((size_t)(rows.first[oy] + i) * img->width + cols.first[ox]) * 3;
                for (int j = 0; j < cols.taps[ox]; j++)
                    for (int c = 0; c < 3; c++) sum[c] += wy[i] * wx[j] * (float)row[3 * j + c];
            }
            for (int c = 0; c < 3; c++)
                out[((size_t)c * height + y) * width + x] = (sum[c] / 255.0f - MEAN[c]) / STD[c];
        }
    }
    free_table(&rows);
    free_table(&cols);
    return 0;
}

/* ------------------------------------------------------------------ labels and top-5 */
static char *read_labels(const char *path, const char *labels[MAX_LABELS], int *count)
{
    FILE *in = fopen(path, "rb");
    long size;
    char *text;
    *count = 0;
    if (!in) return NULL;
    if (fseek(in, 0, SEEK_END) || (size = ftell(in)) < 0 || fseek(in, 0, SEEK_SET) ||
        !(text = (char *)malloc((size_t)size + 1)) || fread(text, 1, (size_t)size, in) != (size_t)size) {
        fclose(in);
        return NULL;
    }
    fclose(in);
    text[size] = '\0';
    for (char *line = strtok(text, "\n"); line && *count < MAX_LABELS; line = strtok(NULL, "\n")) {
        size_t n = strlen(line);
        if (n && line[n - 1] == '\r') line[n - 1] = '\0';
        if (line[0] && line[0] != '#') labels[(*count)++] = line;
    }
    return text;
}

static void print_top(const char *name, const float *logits, int classes, const char **labels, int nlabels)
{
    int best[TOP], k = classes < TOP ? classes : TOP;
    double max = logits[0], total = 0.0;
    for (int i = 1; i < classes; i++) max = logits[i] > max ? logits[i] : max;
    for (int i = 0; i < classes; i++) total += exp(logits[i] - max);
    for (int r = 0; r < k; r++) { /* the r-th largest, the lower index first among equals */
        best[r] = -1;
        for (int i = 0; i < classes; i++) {
            int taken = 0;
            for (int q = 0; q < r; q++) taken |= best[q] == i;
            if (!taken && (best[r] < 0 || logits[i] > logits[best[r]])) best[r] = i;
        }
    }
    printf("output '%s' [1, %d]: top-%d (softmax probabilities)\n", name, classes, k);
    for (int r = 0; r < k; r++) {
        int c = best[r];
        printf("  %d.  %.4f  %s  (class %d)\n", r + 1, exp(logits[c] - max) / total,
               c < nlabels ? labels[c] : "?", c);
    }
}

/* ------------------------------------------------------------------ main */
int main(int argc, char **argv)
{
    const char *bundle = NULL, *photo = NULL, *labels_path = "edgerun/zoo/imagenet_classes.txt";
    int threads = 0, positional = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (positional == 0 && ++positional) bundle = argv[i];
        else if (positional == 1 && ++positional) photo = argv[i];
        else if (positional == 2 && ++positional) labels_path = argv[i];
    }
    if (!bundle || !photo) {
        fprintf(stderr, "usage: classify MODEL.erb PHOTO.ppm [LABELS.txt] [--threads N]\n");
        return 2;
    }
    edgerun_error error;
    edgerun_model *model = NULL;
    if (edgerun_open_file(bundle, 0, &model, &error) != EDGERUN_OK) {
        fprintf(stderr, "classify: %s: %s (%s)\n", bundle, error.message, edgerun_status_name(error.status));
        return 1;
    }
    edgerun_tensor_info in, out;
    size_t arena_bytes;
    if (edgerun_input_info(model, 0, &in, &error) || edgerun_output_info(model, 0, &out, &error) ||
        edgerun_arena_bytes(model, threads, &arena_bytes, &error)) {
        fprintf(stderr, "classify: %s (%s)\n", error.message, edgerun_status_name(error.status));
        edgerun_close(model);
        return 1;
    }
    if (edgerun_input_count(model) != 1 || in.rank != 4 || in.dims[0] != 1 || in.dims[1] != 3 || out.rank != 2) {
        fprintf(stderr, "classify: the model must take one (1, 3, H, W) image and give (1, classes) scores\n");
        edgerun_close(model);
        return 1;
    }
    image img = {0, 0, NULL};
    if (read_netpbm(photo, &img)) {
        edgerun_close(model);
        return 1;
    }
    /* everything a run needs is allocated here, before it */
    void *arena = NULL;
    size_t arena_alloc = (arena_bytes + EDGERUN_ARENA_ALIGNMENT - 1) / EDGERUN_ARENA_ALIGNMENT * EDGERUN_ARENA_ALIGNMENT;
    float *input = (float *)malloc(in.bytes), *logits = (float *)malloc(out.bytes);
    if (arena_alloc && posix_memalign(&arena, EDGERUN_ARENA_ALIGNMENT, arena_alloc)) arena = NULL;
    int status = 1;
    if (!input || !logits || (arena_alloc && !arena)) {
        fprintf(stderr, "classify: out of memory\n");
    } else if (preprocess(&img, (int)in.dims[2], (int)in.dims[3], input) == 0) {
        free(img.rgb);
        img.rgb = NULL;
        const void *inputs[1] = {input};
        void *outputs[1] = {logits};
        if (edgerun_run(model, arena, arena_alloc, threads, inputs, &in.bytes, outputs, &out.bytes, &error)) {
            fprintf(stderr, "classify: %s (%s)\n", error.message, edgerun_status_name(error.status));
        } else {
            const char *labels[MAX_LABELS];
            int nlabels = 0;
            char *text = read_labels(labels_path, labels, &nlabels);
            print_top(out.name, logits, (int)out.dims[1], labels, nlabels);
            free(text);
            struct rusage usage;
            getrusage(RUSAGE_SELF, &usage);
            printf("arena:       %zu bytes (%d thread(s))\n", arena_bytes, edgerun_planned_threads(model));
            printf("weights:     %zu bytes read in place from the bundle\n", edgerun_weight_bytes(model));
            printf("peak RSS:    %ld KiB (getrusage)\n", usage.ru_maxrss);
            status = 0;
        }
    }
    free(img.rgb);
    free(input);
    free(logits);
    free(arena);
    edgerun_close(model);
    return status;
}

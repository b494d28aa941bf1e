/*
 * edgecap_profile: a qemu-user TCG plugin (plugin API version 1, as in Debian's qemu 7.2) that
 * counts what an emulated ARM run of edgecap executes, for scripts/arm-profile.sh.
 *
 *   qemu-aarch64 -d plugin -D /dev/null -plugin ./edgecap_profile.so,out=run.json[,llc=2048] ...
 *
 * (`-d plugin` matters: qemu 7.2 reads the guest binary's symbol table only while a log is
 * enabled, and the profile and the stage markers are found by symbol name.)
 *
 * What it counts (emulation: deterministic counts, not time; no pipeline, no timing):
 *   - guest instructions, with two inline adds per translated block (TB): the block's
 *     instruction count into a global counter, 1 into the block's own execution counter;
 *   - per symbol: a block's instructions go to the symbol of its first instruction
 *     (qemu_plugin_insn_symbol: the executable's own functions; a block in a shared library
 *     has no symbol there and is named "@<address>", which the report names offline from the
 *     process's memory map, written with the results, and the library's dynamic symbols);
 *   - stage markers: when a block whose first instruction is in a function named
 *     `edgecap_stage_<name>` (engine/src/stage.rs) executes, the counters so far are recorded
 *     under <name>, and the per-symbol counts since the previous marker are added to the previous
 *     marker's stage;
 *   - with mem=on or llc=KiB: every guest load and store through a memory callback (much
 *     slower): bytes loaded and stored (the access sizes), and with llc=KiB a simulated
 *     last-level cache (write-back, write-allocate, LRU, `ways` ways of `line`-byte lines, one
 *     cache for all threads, every access going straight to it: private L1/L2 are not modelled,
 *     which changes hits, not last-level misses, for an inclusive hierarchy). Its misses and
 *     dirty evictions, times the line size, estimate the bytes moved to and from DRAM.
 *
 * Arguments: out=PATH (JSON written at exit; default edgecap-profile.json), mem=on|off,
 * llc=KiB (0 = no cache), ways=N (16), line=BYTES (64), top=N (symbols listed per stage, 300).
 *
 * The plugin API is declared here (qemu does not package its header): the handful of functions
 * and types this file uses, with the ABI of version 1.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- plugin API v1 declarations (the subset used) ---- */
typedef uint64_t qp_id_t;
typedef uint32_t qp_meminfo_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
} qp_info_t;
enum qp_cb_flags { QP_CB_NO_REGS = 0 };
enum qp_mem_rw { QP_MEM_R = 1, QP_MEM_W = 2, QP_MEM_RW = 3 };
enum qp_op { QP_INLINE_ADD_U64 = 0 };
typedef void (*qp_tb_trans_cb)(qp_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qp_vcpu_udata_cb)(unsigned int vcpu, void *udata);
typedef void (*qp_mem_cb)(unsigned int vcpu, qp_meminfo_t info, uint64_t vaddr, void *udata);
typedef void (*qp_udata_cb)(qp_id_t id, void *udata);

extern void qemu_plugin_register_vcpu_tb_trans_cb(qp_id_t id, qp_tb_trans_cb cb);
extern void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qp_vcpu_udata_cb cb,
                                                 enum qp_cb_flags flags, void *udata);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qp_op op,
                                                     void *ptr, uint64_t imm);
extern void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn, qp_mem_cb cb,
                                             enum qp_cb_flags flags, enum qp_mem_rw rw,
                                             void *udata);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb,
                                                        size_t idx);
extern const char *qemu_plugin_insn_symbol(const struct qemu_plugin_insn *insn);
extern unsigned int qemu_plugin_mem_size_shift(qp_meminfo_t info);
extern bool qemu_plugin_mem_is_store(qp_meminfo_t info);
extern void qemu_plugin_register_atexit_cb(qp_id_t id, qp_udata_cb cb, void *udata);
extern uint64_t qemu_plugin_start_code(void);
extern uint64_t qemu_plugin_entry_code(void);
extern const char *qemu_plugin_path_to_binary(void);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* ---- state ---- */
#define MARKER_PREFIX "edgecap_stage_"
#define NO_SYMBOL 0u

typedef struct {
    uint64_t exec;      /* inline: +1 per execution */
    uint64_t misses;    /* simulated last-level misses (+ write-backs) charged to this block */
    uint64_t last_exec; /* exec at the previous fold */
    uint64_t last_misses;
    uint64_t vaddr;
    uint32_t n_insns;
    uint32_t sym;
} tb_rec;

#define CHUNK_BITS 14
#define CHUNK (1u << CHUNK_BITS)
#define MAX_CHUNKS 8192
static tb_rec *chunks[MAX_CHUNKS];
static size_t n_recs;

/* Interned names: symbols and stages share one table; index 0 = no symbol. */
static char **names;
static size_t n_names, cap_names;

typedef struct {
    uint32_t name;       /* stage name */
    uint64_t *sym_insns; /* per name index */
    uint64_t *sym_misses;
    size_t cap;
    uint64_t insns, visits;
} stage_rec;
static stage_rec *stages;
static size_t n_stages, cap_stages;
static size_t cur_stage;

typedef struct {
    uint32_t stage;
    uint64_t insns, ld_bytes, st_bytes, ld_n, st_n, misses, writebacks;
} mark_rec;
static mark_rec *marks;
static size_t n_marks, cap_marks;

/* Marker entry address per name (a block starting later in the same marker is not a call). */
static uint64_t *marker_entry; /* indexed by name, 0 = not a marker / unseen */

static uint64_t g_insns, g_ld_bytes, g_st_bytes, g_ld_n, g_st_n, g_misses, g_writebacks;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static const char *out_path = "edgecap-profile.json";
static bool mem_on;
static uint64_t llc_kib, llc_ways = 16, llc_line = 64;
static size_t top_n = 300;

/* ---- simulated last-level cache ---- */
static uint64_t *c_tags; /* per set, `ways` entries, most recent first; 0 = empty; bit 0 = dirty */
static uint64_t c_sets, c_line_shift;
static uint64_t c_last_line = UINT64_MAX; /* the most recent line: a hit without reordering */

static inline void cache_touch(uint64_t line, bool store, tb_rec *rec)
{
    if (line == c_last_line) {
        if (store)
            c_tags[(line % c_sets) * llc_ways] |= 1;
        return;
    }
    c_last_line = line;
    uint64_t *set = c_tags + (line % c_sets) * llc_ways;
    uint64_t tag = (line + 1) << 1; /* never 0 */
    size_t w;
    for (w = 0; w < llc_ways; w++) {
        if ((set[w] & ~1ull) == tag)
            break;
    }
    uint64_t entry;
    if (w == llc_ways) { /* miss: the least recent line leaves, written back if dirty */
        w = llc_ways - 1;
        if (set[w] & 1) {
            g_writebacks++;
            rec->misses++;
        }
        g_misses++;
        rec->misses++;
        entry = tag;
    } else {
        entry = set[w];
    }
    memmove(set + 1, set, w * sizeof(uint64_t));
    set[0] = entry | (store ? 1 : 0);
}

static void on_mem(unsigned int vcpu, qp_meminfo_t info, uint64_t vaddr, void *udata)
{
    (void)vcpu;
    uint64_t size = 1ull << qemu_plugin_mem_size_shift(info);
    bool store = qemu_plugin_mem_is_store(info);
    if (store) {
        g_st_bytes += size;
        g_st_n++;
    } else {
        g_ld_bytes += size;
        g_ld_n++;
    }
    if (c_tags) {
        uint64_t first = vaddr >> c_line_shift, last = (vaddr + size - 1) >> c_line_shift;
        for (uint64_t l = first; l <= last; l++)
            cache_touch(l, store, (tb_rec *)udata);
    }
}

/* ---- names, stages ---- */
static uint32_t intern(const char *s)
{
    /* Linear probing over a small open-addressed index. */
    static uint32_t *index;
    static size_t index_cap;
    if (n_names * 2 >= index_cap) {
        size_t cap = index_cap ? index_cap * 2 : 4096;
        uint32_t *grown = calloc(cap, sizeof(uint32_t));
        for (size_t i = 0; i < index_cap; i++) {
            if (!index[i])
                continue;
            uint64_t h = 1469598103934665603ull;
            for (const char *p = names[index[i]]; *p; p++)
                h = (h ^ (unsigned char)*p) * 1099511628211ull;
            size_t j = h & (cap - 1);
            while (grown[j])
                j = (j + 1) & (cap - 1);
            grown[j] = index[i];
        }
        free(index);
        index = grown;
        index_cap = cap;
    }
    uint64_t h = 1469598103934665603ull;
    for (const char *p = s; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    size_t j = h & (index_cap - 1);
    while (index[j]) {
        if (strcmp(names[index[j]], s) == 0)
            return index[j];
        j = (j + 1) & (index_cap - 1);
    }
    if (n_names == cap_names) {
        cap_names = cap_names ? cap_names * 2 : 4096;
        names = realloc(names, cap_names * sizeof(char *));
        marker_entry = realloc(marker_entry, cap_names * sizeof(uint64_t));
    }
    if (n_names == 0) { /* slot 0: blocks without a symbol */
        names[0] = strdup("?");
        marker_entry[0] = 0;
        n_names = 1;
    }
    names[n_names] = strdup(s);
    marker_entry[n_names] = 0;
    index[j] = (uint32_t)n_names;
    return (uint32_t)n_names++;
}

static size_t stage_of(uint32_t name)
{
    for (size_t i = 0; i < n_stages; i++) {
        if (stages[i].name == name)
            return i;
    }
    if (n_stages == cap_stages) {
        cap_stages = cap_stages ? cap_stages * 2 : 32;
        stages = realloc(stages, cap_stages * sizeof(stage_rec));
    }
    memset(&stages[n_stages], 0, sizeof(stage_rec));
    stages[n_stages].name = name;
    return n_stages++;
}

static inline tb_rec *rec_at(size_t i)
{
    return &chunks[i >> CHUNK_BITS][i & (CHUNK - 1)];
}

/* Adds every block's executions since the previous fold to stage `s`, per symbol. */
static void fold_into(size_t s)
{
    stage_rec *st = &stages[s];
    if (st->cap < n_names) {
        size_t cap = n_names + 1024;
        st->sym_insns = realloc(st->sym_insns, cap * sizeof(uint64_t));
        st->sym_misses = realloc(st->sym_misses, cap * sizeof(uint64_t));
        memset(st->sym_insns + st->cap, 0, (cap - st->cap) * sizeof(uint64_t));
        memset(st->sym_misses + st->cap, 0, (cap - st->cap) * sizeof(uint64_t));
        st->cap = cap;
    }
    for (size_t i = 0; i < n_recs; i++) {
        tb_rec *r = rec_at(i);
        uint64_t e = r->exec, m = r->misses;
        if (e != r->last_exec) {
            uint64_t d = (e - r->last_exec) * r->n_insns;
            st->sym_insns[r->sym] += d;
            st->insns += d;
            r->last_exec = e;
        }
        if (m != r->last_misses) {
            st->sym_misses[r->sym] += m - r->last_misses;
            r->last_misses = m;
        }
    }
}

static void on_marker(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    uint32_t name = (uint32_t)(uintptr_t)udata;
    pthread_mutex_lock(&lock);
    fold_into(cur_stage);
    cur_stage = stage_of(name);
    stages[cur_stage].visits++;
    if (n_marks == cap_marks) {
        cap_marks = cap_marks ? cap_marks * 2 : 256;
        marks = realloc(marks, cap_marks * sizeof(mark_rec));
    }
    marks[n_marks++] = (mark_rec){name, g_insns, g_ld_bytes, g_st_bytes, g_ld_n, g_st_n, g_misses,
                                  g_writebacks};
    pthread_mutex_unlock(&lock);
}

/* ---- translation ---- */
static void on_tb_trans(qp_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint64_t vaddr = qemu_plugin_tb_vaddr(tb);
    const char *sym = n ? qemu_plugin_insn_symbol(qemu_plugin_tb_get_insn(tb, 0)) : NULL;

    pthread_mutex_lock(&lock);
    if (n_recs == (size_t)MAX_CHUNKS * CHUNK) {
        pthread_mutex_unlock(&lock);
        fprintf(stderr, "edgecap_profile: more than %zu translated blocks\n", n_recs);
        abort();
    }
    if ((n_recs & (CHUNK - 1)) == 0 && !chunks[n_recs >> CHUNK_BITS])
        chunks[n_recs >> CHUNK_BITS] = calloc(CHUNK, sizeof(tb_rec));
    tb_rec *rec = rec_at(n_recs++);
    rec->vaddr = vaddr;
    rec->n_insns = (uint32_t)n;
    if (sym && *sym) {
        rec->sym = intern(sym);
    } else { /* named by address, for the report to look up in the guest's libraries */
        char addr[32];
        snprintf(addr, sizeof addr, "@%" PRIx64, vaddr);
        rec->sym = intern(addr);
    }
    bool marker = false;
    if (sym && strncmp(sym, MARKER_PREFIX, strlen(MARKER_PREFIX)) == 0) {
        uint64_t *entry = &marker_entry[rec->sym];
        if (*entry == 0 || vaddr <= *entry) {
            *entry = vaddr;
            marker = true;
        }
    }
    uint32_t stage_name = marker ? intern(sym + strlen(MARKER_PREFIX)) : 0;
    pthread_mutex_unlock(&lock);

    qemu_plugin_register_vcpu_tb_exec_inline(tb, QP_INLINE_ADD_U64, &g_insns, n);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QP_INLINE_ADD_U64, &rec->exec, 1);
    if (marker)
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_marker, QP_CB_NO_REGS,
                                             (void *)(uintptr_t)stage_name);
    if (mem_on) {
        for (size_t i = 0; i < n; i++)
            qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), on_mem,
                                             QP_CB_NO_REGS, QP_MEM_RW, rec);
    }
}

/* ---- output ---- */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static const uint64_t *sort_key;
static int by_key_desc(const void *a, const void *b)
{
    uint64_t x = sort_key[*(const uint32_t *)a], y = sort_key[*(const uint32_t *)b];
    return x < y ? 1 : x > y ? -1 : 0;
}

static void write_symbols(FILE *f, const uint64_t *insns, const uint64_t *misses, size_t len,
                          size_t limit)
{
    uint32_t *order = malloc((len ? len : 1) * sizeof(uint32_t));
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (insns[i] || misses[i])
            order[k++] = (uint32_t)i;
    }
    sort_key = insns;
    qsort(order, k, sizeof(uint32_t), by_key_desc);
    fputc('[', f);
    for (size_t i = 0; i < k && i < limit; i++) {
        fprintf(f, "%s{\"symbol\":", i ? ",\n    " : "");
        json_str(f, names[order[i]]);
        fprintf(f, ",\"insns\":%" PRIu64 ",\"llc_misses\":%" PRIu64 "}", insns[order[i]],
                misses[order[i]]);
    }
    fputc(']', f);
    free(order);
}

static void on_exit_cb(qp_id_t id, void *udata)
{
    (void)id;
    (void)udata;
    pthread_mutex_lock(&lock);
    if (n_stages == 0)
        stage_of(intern("startup"));
    fold_into(cur_stage);
    FILE *f = fopen(out_path, "w");
    if (!f) {
        perror(out_path);
        pthread_mutex_unlock(&lock);
        return;
    }
    fprintf(f, "{\"tool\":\"edgecap_profile\",\"binary\":");
    json_str(f, qemu_plugin_path_to_binary() ? qemu_plugin_path_to_binary() : "?");
    fprintf(f, ",\"start_code\":%" PRIu64 ",\"entry_code\":%" PRIu64 ",\n", qemu_plugin_start_code(),
            qemu_plugin_entry_code());
    fprintf(f, "\"config\":{\"mem\":%s,\"llc_kib\":%" PRIu64 ",\"llc_ways\":%" PRIu64
               ",\"llc_line\":%" PRIu64 "},\n",
            mem_on ? "true" : "false", llc_kib, llc_ways, llc_line);
    fprintf(f, "\"totals\":{\"insns\":%" PRIu64 ",\"load_bytes\":%" PRIu64 ",\"store_bytes\":%" PRIu64
               ",\"loads\":%" PRIu64 ",\"stores\":%" PRIu64 ",\"llc_misses\":%" PRIu64
               ",\"llc_writebacks\":%" PRIu64 ",\"translated_blocks\":%zu},\n",
            g_insns, g_ld_bytes, g_st_bytes, g_ld_n, g_st_n, g_misses, g_writebacks, n_recs);
    fprintf(f, "\"markers\":[");
    for (size_t i = 0; i < n_marks; i++) {
        mark_rec *m = &marks[i];
        fprintf(f, "%s{\"stage\":", i ? ",\n  " : "\n  ");
        json_str(f, names[m->stage]);
        fprintf(f, ",\"insns\":%" PRIu64 ",\"load_bytes\":%" PRIu64 ",\"store_bytes\":%" PRIu64
                   ",\"loads\":%" PRIu64 ",\"stores\":%" PRIu64 ",\"llc_misses\":%" PRIu64
                   ",\"llc_writebacks\":%" PRIu64 "}",
                m->insns, m->ld_bytes, m->st_bytes, m->ld_n, m->st_n, m->misses, m->writebacks);
    }
    fprintf(f, "],\n\"stages\":{");
    /* Per stage: the top symbols; "all": every symbol over the whole run. */
    uint64_t *all_i = calloc(n_names, sizeof(uint64_t)), *all_m = calloc(n_names, sizeof(uint64_t));
    for (size_t s = 0; s < n_stages; s++) {
        stage_rec *st = &stages[s];
        size_t len = st->cap < n_names ? st->cap : n_names;
        for (size_t i = 0; i < len; i++) {
            all_i[i] += st->sym_insns[i];
            all_m[i] += st->sym_misses[i];
        }
        fprintf(f, "%s", s ? ",\n  " : "\n  ");
        json_str(f, names[st->name]);
        fprintf(f, ":{\"insns\":%" PRIu64 ",\"visits\":%" PRIu64 ",\"top\":", st->insns, st->visits);
        write_symbols(f, st->sym_insns, st->sym_misses, len, top_n);
        fputc('}', f);
    }
    fprintf(f, "},\n\"symbols\":");
    write_symbols(f, all_i, all_m, n_names, SIZE_MAX);
    /* The markers' entry addresses: with the binary's symbol table they give its load bias. */
    fprintf(f, ",\n\"marker_entries\":{");
    size_t k = 0;
    for (size_t i = 1; i < n_names; i++) {
        if (!marker_entry[i])
            continue;
        fprintf(f, "%s", k++ ? "," : "");
        json_str(f, names[i]);
        fprintf(f, ":%" PRIu64, marker_entry[i]);
    }
    fprintf(f, "}");
    fprintf(f, ",\n\"host_maps\":[");
    /* The process's mappings (host addresses): the report finds the guest's libraries in them. */
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096];
    k = 0;
    while (maps && fgets(line, sizeof line, maps)) {
        line[strcspn(line, "\n")] = 0;
        if (!strchr(line, '/'))
            continue;
        fprintf(f, "%s", k++ ? ",\n  " : "\n  ");
        json_str(f, line);
    }
    if (maps)
        fclose(maps);
    fprintf(f, "]}\n");
    fclose(f);
    free(all_i);
    free(all_m);
    pthread_mutex_unlock(&lock);
}

static bool arg_value(const char *arg, const char *key, const char **value)
{
    size_t n = strlen(key);
    if (strncmp(arg, key, n) == 0 && arg[n] == '=') {
        *value = arg + n + 1;
        return true;
    }
    return false;
}

__attribute__((visibility("default"))) int qemu_plugin_install(qp_id_t id, const qp_info_t *info,
                                                               int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        const char *v;
        if (arg_value(argv[i], "out", &v))
            out_path = v;
        else if (arg_value(argv[i], "mem", &v))
            mem_on = strcmp(v, "on") == 0 || strcmp(v, "true") == 0;
        else if (arg_value(argv[i], "llc", &v))
            llc_kib = strtoull(v, NULL, 10);
        else if (arg_value(argv[i], "ways", &v))
            llc_ways = strtoull(v, NULL, 10);
        else if (arg_value(argv[i], "line", &v))
            llc_line = strtoull(v, NULL, 10);
        else if (arg_value(argv[i], "top", &v))
            top_n = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "edgecap_profile: unknown argument %s\n", argv[i]);
            return -1;
        }
    }
    if (llc_kib) {
        uint64_t lines = llc_kib * 1024 / llc_line;
        if (llc_ways == 0 || llc_line == 0 || (llc_line & (llc_line - 1)) || lines % llc_ways) {
            fprintf(stderr, "edgecap_profile: bad cache geometry\n");
            return -1;
        }
        c_sets = lines / llc_ways;
        c_line_shift = (uint64_t)__builtin_ctzll(llc_line);
        c_tags = calloc(lines, sizeof(uint64_t));
        mem_on = true;
    }
    intern("?");
    cur_stage = stage_of(intern("startup"));
    stages[cur_stage].visits = 1;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, on_exit_cb, NULL);
    return 0;
}

/* hybridlog._speedups: the hot loops of format 2 and of the Merkle tree in C, each the exact twin of a Python loop.
 *
 *   frame_plain  the append loop for uncompressed records (record.append_frames, compressor None);
 *   walk_plain   the read loop's common case (walk.SegmentWalk._fast): a run of whole, plain format-2
 *                frames (uncompressed, flags 0 or batch end) that verify; it stops, saying where, at
 *                the first frame it does not vouch for, and the Python loop carries on from there;
 *   scan_plain   a rebuild's scan of such frames (events and checkpoints), straight to ``batches``
 *                rows (scan.scan_plain_stream): the rows Catalog.insert_records makes of them;
 *   tree_leaves, merkle_root
 *                the store's Merkle tree on the append path (framing.leaf_hashes, merkle.root over a
 *                tile row): SHA-256 from FIPS 180-4 (with the x86 SHA extensions where the CPU has
 *                them), RFC 6962's 0x00 leaf and 0x01 node prefixes.
 *
 * Each hashes a record as record.py says: BLAKE3 over the header's first 80 bytes as written with
 * flags 0, then the payload. When header and payload fit in one BLAKE3 chunk (1024 bytes: payloads
 * up to 944 bytes) the hash is computed here, from the BLAKE3 specification (one chunk, which is
 * then the root: no tree); longer records are hashed by the ``blake3`` package through the
 * ``long_hash`` callable the caller passes. ``native.py`` loads this module, and HYBRIDLOG_PURE=1
 * makes hybridlog run without it; the test suite runs both ways and compares their bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* --- BLAKE3, one chunk -------------------------------------------------------------------------- */

static const uint32_t IV[8] = {0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
                               0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};
enum { CHUNK_START = 1, CHUNK_END = 2, ROOT = 8, BLOCK = 64, CHUNK = 1024 };

static inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
static inline uint32_t load32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t load64(const uint8_t *p) { return (uint64_t)load32(p) | ((uint64_t)load32(p + 4) << 32); }
static inline void store32(uint8_t *p, uint32_t x) {
    p[0] = (uint8_t)x; p[1] = (uint8_t)(x >> 8); p[2] = (uint8_t)(x >> 16); p[3] = (uint8_t)(x >> 24);
}
static inline void store64(uint8_t *p, uint64_t x) { store32(p, (uint32_t)x); store32(p + 4, (uint32_t)(x >> 32)); }

#define G(a, b, c, d, x, y)                                 \
    do {                                                    \
        a = a + b + (x); d = rotr(d ^ a, 16);               \
        c = c + d;       b = rotr(b ^ c, 12);               \
        a = a + b + (y); d = rotr(d ^ a, 8);                \
        c = c + d;       b = rotr(b ^ c, 7);                \
    } while (0)

/* The compression function with chunk counter 0: cv becomes the first half of its output. */
static void compress(uint32_t cv[8], const uint8_t block[BLOCK], uint32_t block_len, uint32_t flags) {
    uint32_t m[16];
    for (int i = 0; i < 16; i++) m[i] = load32(block + 4 * i);
    uint32_t s0 = cv[0], s1 = cv[1], s2 = cv[2], s3 = cv[3], s4 = cv[4], s5 = cv[5], s6 = cv[6], s7 = cv[7];
    uint32_t s8 = IV[0], s9 = IV[1], s10 = IV[2], s11 = IV[3], s12 = 0, s13 = 0, s14 = block_len, s15 = flags;
#define ROUND(a, b, c, d, e, f, g_, h, i, j, k, l, n, o, p, q) \
    G(s0, s4, s8, s12, m[a], m[b]);                          \
    G(s1, s5, s9, s13, m[c], m[d]);                          \
    G(s2, s6, s10, s14, m[e], m[f]);                         \
    G(s3, s7, s11, s15, m[g_], m[h]);                        \
    G(s0, s5, s10, s15, m[i], m[j]);                         \
    G(s1, s6, s11, s12, m[k], m[l]);                         \
    G(s2, s7, s8, s13, m[n], m[o]);                          \
    G(s3, s4, s9, s14, m[p], m[q])
    /* the message word order of each round: the first is 0..15, and each next one is the one before
     * permuted by (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8), the specification's
     * message permutation */
    ROUND(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    ROUND(2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8);
    ROUND(3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1);
    ROUND(10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6);
    ROUND(12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4);
    ROUND(9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7);
    ROUND(11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13);
#undef ROUND
    cv[0] = s0 ^ s8; cv[1] = s1 ^ s9; cv[2] = s2 ^ s10; cv[3] = s3 ^ s11;
    cv[4] = s4 ^ s12; cv[5] = s5 ^ s13; cv[6] = s6 ^ s14; cv[7] = s7 ^ s15;
}

/* BLAKE3 (32 bytes) of an input of at most one chunk, which is then the root node. */
static void hash_one_chunk(const uint8_t *in, size_t len, uint8_t out[32]) {
    uint32_t cv[8];
    uint8_t block[BLOCK];
    size_t at = 0;
    memcpy(cv, IV, sizeof cv);
    do {
        size_t n = len - at < BLOCK ? len - at : BLOCK;
        uint32_t flags = at == 0 ? CHUNK_START : 0;
        if (at + n == len) flags |= CHUNK_END | ROOT;
        memset(block, 0, BLOCK);
        memcpy(block, in + at, n);
        compress(cv, block, (uint32_t)n, flags);
        at += n;
    } while (at < len);
    for (int i = 0; i < 8; i++) store32(out + 4 * i, cv[i]);
}

/* --- the record hash -------------------------------------------------------------------------- */

enum { HASHED = 80, HEADER = 112, FLAGS_AT = 6, LONGEST_HERE = CHUNK - HASHED, FLAG_BATCH_END = 2 };
#define MAX_STORED_LEN (64u * 1024u * 1024u) /* record.MAX_STORED_LEN */
static const uint8_t MAGIC[4] = {'H', 'L', 'R', '1'};

/* The record hash of ``header`` (its first 80 bytes; the flags byte is taken as 0) and ``payload``.
 * Returns 0, or -1 with a Python error set (only ``long_hash`` can fail). */
static int record_hash(const uint8_t *header, const uint8_t *payload, size_t len, PyObject *long_hash,
                       uint8_t out[32]) {
    if (len <= LONGEST_HERE) {
        uint8_t message[CHUNK];
        memcpy(message, header, HASHED);
        message[FLAGS_AT] = 0;
        memcpy(message + HASHED, payload, len);
        hash_one_chunk(message, HASHED + len, out);
        return 0;
    }
    uint8_t head[HASHED];
    memcpy(head, header, HASHED);
    head[FLAGS_AT] = 0;
    PyObject *result = PyObject_CallFunction(long_hash, "y#y#", (const char *)head, (Py_ssize_t)HASHED,
                                             (const char *)payload, (Py_ssize_t)len);
    if (result == NULL) return -1;
    if (!PyBytes_Check(result) || PyBytes_GET_SIZE(result) != 32) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_TypeError, "long_hash must return 32 bytes");
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(result), 32);
    Py_DECREF(result);
    return 0;
}

static PyObject *py_record_hash(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer header, payload;
    PyObject *long_hash;
    if (!PyArg_ParseTuple(args, "y*y*O", &header, &payload, &long_hash)) return NULL;
    PyObject *result = NULL;
    uint8_t own[32];
    if (header.len < HASHED) {
        PyErr_SetString(PyExc_ValueError, "header must hold at least 80 bytes");
    } else if (record_hash(header.buf, payload.buf, (size_t)payload.len, long_hash, own) == 0) {
        result = PyBytes_FromStringAndSize((const char *)own, 32);
    }
    PyBuffer_Release(&header);
    PyBuffer_Release(&payload);
    return result;
}

/* --- frame_plain ---------------------------------------------------------------------------------- */

static PyObject *py_frame_plain(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *out, *records, *prev, *long_hash;
    unsigned long long sid, offset, position, timestamp;
    int batch_end;
    if (!PyArg_ParseTuple(args, "O!OKKKKSpO", &PyByteArray_Type, &out, &records, &sid, &offset, &position,
                          &timestamp, &prev, &batch_end, &long_hash))
        return NULL;
    if (PyBytes_GET_SIZE(prev) != 32) return PyErr_Format(PyExc_ValueError, "prev_hash must be 32 bytes");
    PyObject *seq = PySequence_Fast(records, "records must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject *ends = PyList_New(count), *specials = PyList_New(0), *last = NULL, *result = NULL;
    Py_buffer *views = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Py_buffer));
    long *kinds = PyMem_Calloc(count ? (size_t)count : 1, sizeof(long));
    Py_ssize_t got = 0, total = 0;
    if (ends == NULL || specials == NULL || views == NULL || kinds == NULL) goto done;
    for (; got < count; got++) {  /* every payload's bytes first, so the buffer grows once */
        PyObject *item = PySequence_Fast_GET_ITEM(seq, got);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "records must be (kind, payload) pairs");
            goto done;
        }
        kinds[got] = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
        if (kinds[got] == -1 && PyErr_Occurred()) goto done;
        if (kinds[got] < 0 || kinds[got] > 255) {
            PyErr_SetString(PyExc_ValueError, "record kind out of range");
            goto done;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 1), &views[got], PyBUF_SIMPLE) < 0) goto done;
        if ((unsigned long long)views[got].len > 0xFFFFFFFFull) {
            got++;
            PyErr_SetString(PyExc_ValueError, "payload too large for a frame");
            goto done;
        }
        total += HEADER + views[got].len;
    }
    Py_ssize_t start = PyByteArray_GET_SIZE(out);
    if (PyByteArray_Resize(out, start + total) < 0) goto done;
    uint8_t *at = (uint8_t *)PyByteArray_AS_STRING(out) + start;
    uint8_t link[32];
    memcpy(link, PyBytes_AS_STRING(prev), 32);
    for (Py_ssize_t i = 0; i < count; i++) {
        uint32_t len = (uint32_t)views[i].len;
        memcpy(at, MAGIC, 4);
        at[4] = 2; at[5] = (uint8_t)kinds[i]; at[6] = 0; at[7] = 0;
        store64(at + 8, sid); store64(at + 16, offset + (uint64_t)i); store64(at + 24, position + (uint64_t)i);
        store64(at + 32, timestamp); store32(at + 40, len); store32(at + 44, len);
        memcpy(at + 48, link, 32);
        memcpy(at + HEADER, views[i].buf, len);
        if (record_hash(at, at + HEADER, len, long_hash, link) < 0) goto done;
        memcpy(at + HASHED, link, 32);
        if (batch_end && i == count - 1) at[FLAGS_AT] = FLAG_BATCH_END;
        at += HEADER + len;
        PyObject *end = PyLong_FromSsize_t(at - (uint8_t *)PyByteArray_AS_STRING(out));
        if (end == NULL) goto done;
        PyList_SET_ITEM(ends, i, end);
        if (kinds[i]) {
            PyObject *special = Py_BuildValue("(nly#)", i, kinds[i], (const char *)link, (Py_ssize_t)32);
            if (special == NULL || PyList_Append(specials, special) < 0) {
                Py_XDECREF(special);
                goto done;
            }
            Py_DECREF(special);
        }
    }
    last = count ? PyBytes_FromStringAndSize((const char *)link, 32) : Py_NewRef(prev);
    if (last != NULL) result = PyTuple_Pack(3, ends, specials, last);
done:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(kinds);
    Py_XDECREF(ends);
    Py_XDECREF(specials);
    Py_XDECREF(last);
    Py_DECREF(seq);
    return result;
}

/* --- walk_plain ----------------------------------------------------------------------------------- */

/* Where each field of a ``Record`` lives in its instances (``__slots__``), found once by
 * ``bind_record``: records are built here as the Python class's own __new__ would fill them. */
static const char *const RECORD_FIELDS[8] = {"stream_id", "prev_hash", "hash", "payload",
                                             "offset", "kind", "timestamp_ns", "global_position"};
static PyTypeObject *record_type = NULL;
static Py_ssize_t record_offsets[8];

static PyObject *py_bind_record(PyObject *Py_UNUSED(self), PyObject *type) {
    if (!PyType_Check(type)) return PyErr_Format(PyExc_TypeError, "bind_record takes the Record class");
    PyObject *dict = ((PyTypeObject *)type)->tp_dict;
    for (int i = 0; i < 8; i++) {
        PyObject *descr = PyDict_GetItemString(dict, RECORD_FIELDS[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type))
            return PyErr_Format(PyExc_TypeError, "Record has no slot %s", RECORD_FIELDS[i]);
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX && member->type != T_OBJECT)
            return PyErr_Format(PyExc_TypeError, "Record's slot %s is not an object slot", RECORD_FIELDS[i]);
        record_offsets[i] = member->offset;
    }
    Py_XSETREF(record_type, (PyTypeObject *)Py_NewRef(type));
    Py_RETURN_NONE;
}

/* A new Record holding the eight given objects (references stolen, NULL-safe: NULL fails it). */
static PyObject *new_record(PyObject *fields[8]) {
    PyObject *record = NULL;
    for (int i = 0; i < 8; i++)
        if (fields[i] == NULL) goto fail;
    record = record_type->tp_alloc(record_type, 0);
    if (record == NULL) goto fail;
    for (int i = 0; i < 8; i++) *(PyObject **)((char *)record + record_offsets[i]) = fields[i];
    return record;
fail:
    for (int i = 0; i < 8; i++) Py_XDECREF(fields[i]);
    return NULL;
}

static PyObject *py_walk_plain(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer buf;
    Py_ssize_t at, position, end;
    PyObject *sid_obj, *link, *anchor, *head, *kinds, *long_hash;
    unsigned long long expected, last_position;
    long long head_offset;
    int frames;
    if (!PyArg_ParseTuple(args, "y*nnnOKOOLOKO!pO", &buf, &at, &position, &end, &sid_obj, &expected, &link,
                          &anchor, &head_offset, &head, &last_position, &PyTuple_Type, &kinds, &frames,
                          &long_hash))
        return NULL;
    PyObject *items = NULL, *result = NULL;
    if (record_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_record was not called");
        goto done;
    }
    if (PyTuple_GET_SIZE(kinds) < 3) {
        PyErr_SetString(PyExc_ValueError, "kinds must hold the three record kinds");
        goto done;
    }
    unsigned long long sid = PyLong_AsUnsignedLongLong(sid_obj);
    if (sid == (unsigned long long)-1 && PyErr_Occurred()) goto done;
    items = PyList_New(0);
    if (items == NULL) goto done;
    Py_INCREF(link);  /* the hash the next record must link to (None: it must be ``anchor``) */
    const uint8_t *data = buf.buf;
    while (position < end) {
        if (buf.len - at < HEADER) break;  /* the caller reads on */
        const uint8_t *h = data + at;
        uint32_t stored_len = load32(h + 40), raw_len = load32(h + 44);
        uint8_t kind = h[5], flags = h[6];
        uint64_t offset = load64(h + 16), gp = load64(h + 24);
        Py_ssize_t size = HEADER + (Py_ssize_t)stored_len;
        if (memcmp(h, MAGIC, 4) != 0 || h[4] != 2 || h[7] != 0 || kind > 2 || (flags != 0 && flags != FLAG_BATCH_END)
            || stored_len != raw_len || stored_len > MAX_STORED_LEN)
            break;
        if (gp <= last_position || load64(h + 8) != sid || offset != expected || position + size > end
            || buf.len - at < size)
            break;
        uint8_t own[32];
        if (record_hash(h, h + HEADER, stored_len, long_hash, own) < 0) {
            Py_DECREF(link);
            goto done;
        }
        if (memcmp(own, h + HASHED, 32) != 0) break;
        if (link == Py_None) {
            if (!PyBytes_Check(anchor) || PyBytes_GET_SIZE(anchor) != 32 || memcmp(own, PyBytes_AS_STRING(anchor), 32))
                break;
        } else if (memcmp(h + 48, PyBytes_AS_STRING(link), 32) != 0) {
            break;
        }
        if ((long long)offset == head_offset
            && (!PyBytes_Check(head) || PyBytes_GET_SIZE(head) != 32 || memcmp(own, PyBytes_AS_STRING(head), 32)))
            break;
        PyObject *kind_obj = PyTuple_GET_ITEM(kinds, kind);
        PyObject *own_obj = PyBytes_FromStringAndSize((const char *)own, 32);
        PyObject *prev_obj = link == Py_None ? PyBytes_FromStringAndSize((const char *)h + 48, 32) : Py_NewRef(link);
        PyObject *fields[8] = {Py_NewRef(sid_obj), prev_obj, Py_XNewRef(own_obj),
                               PyBytes_FromStringAndSize((const char *)h + HEADER, stored_len),
                               PyLong_FromUnsignedLongLong(offset), Py_NewRef(kind_obj),
                               PyLong_FromUnsignedLongLong(load64(h + 32)), PyLong_FromUnsignedLongLong(gp)};
        PyObject *record = new_record(fields);
        PyObject *item = record;
        if (record != NULL && frames) {
            item = Py_BuildValue("(NnnO)", record, position, size, (flags & FLAG_BATCH_END) ? Py_True : Py_False);
        }
        if (item == NULL || PyList_Append(items, item) < 0) {
            Py_XDECREF(item);
            Py_XDECREF(own_obj);
            Py_DECREF(link);
            goto done;
        }
        Py_DECREF(item);
        Py_SETREF(link, own_obj);
        at += size;
        position += size;
        expected = offset + 1;
        last_position = gp;
    }
    result = Py_BuildValue("(NnnKNK)", items, at, position, expected, link, last_position);
    items = NULL;
done:
    Py_XDECREF(items);
    PyBuffer_Release(&buf);
    return result;
}

/* --- scan_plain ----------------------------------------------------------------------------------- */

/* A growable array of u32 frame ends and one of kind bytes: the open ``batches`` row. */
typedef struct {
    uint32_t *ends;
    uint8_t *kinds;
    Py_ssize_t count, capacity;
} RowBuffer;

static int row_reserve(RowBuffer *row, Py_ssize_t count) {
    if (count <= row->capacity) return 0;
    Py_ssize_t capacity = row->capacity ? row->capacity * 2 : 256;
    while (capacity < count) capacity *= 2;
    uint32_t *ends = PyMem_Realloc(row->ends, (size_t)capacity * sizeof(uint32_t));
    if (ends == NULL) return -1;
    row->ends = ends;
    uint8_t *kinds = PyMem_Realloc(row->kinds, (size_t)capacity);
    if (kinds == NULL) return -1;
    row->kinds = kinds;
    row->capacity = capacity;
    return 0;
}

/* The ``batches`` row (catalog_rows.BatchRow) of the open run, appended to ``rows``. */
static int close_row(PyObject *rows, PyObject *sid_obj, uint64_t gp, uint64_t first_offset, long segment_no,
                     Py_ssize_t position, uint64_t ts, RowBuffer *row) {
    uint8_t *ends = PyMem_Malloc(row->count ? (size_t)row->count * 4 : 1);
    if (ends == NULL) return -1;
    int any_kind = 0;
    for (Py_ssize_t i = 0; i < row->count; i++) {
        store32(ends + 4 * i, row->ends[i]);
        any_kind |= row->kinds[i];
    }
    PyObject *kinds = any_kind ? PyBytes_FromStringAndSize((const char *)row->kinds, row->count) : Py_NewRef(Py_None);
    PyObject *tuple = kinds == NULL ? NULL
                                    : Py_BuildValue("(KOKnlny#NK)", (unsigned long long)gp, sid_obj,
                                                    (unsigned long long)first_offset, row->count, segment_no,
                                                    position, (const char *)ends, row->count * 4, kinds,
                                                    (unsigned long long)ts);
    PyMem_Free(ends);
    if (tuple == NULL) return -1;
    int failed = PyList_Append(rows, tuple);
    Py_DECREF(tuple);
    row->count = 0;
    return failed;
}

static PyObject *py_scan_plain(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer buf;
    Py_ssize_t at, position, end;
    PyObject *sid_obj, *link_obj, *long_hash;
    unsigned long long expected, last_position;
    long segment_no;
    if (!PyArg_ParseTuple(args, "y*nnnOKSKlO", &buf, &at, &position, &end, &sid_obj, &expected, &link_obj,
                          &last_position, &segment_no, &long_hash))
        return NULL;
    PyObject *rows = PyList_New(0), *checkpoints = PyList_New(0), *pending_checkpoints = NULL, *result = NULL;
    RowBuffer row = {NULL, NULL, 0, 0};
    unsigned long long sid = PyLong_AsUnsignedLongLong(sid_obj);
    if (rows == NULL || checkpoints == NULL || (sid == (unsigned long long)-1 && PyErr_Occurred())) goto done;
    if (PyBytes_GET_SIZE(link_obj) != 32) {
        PyErr_SetString(PyExc_ValueError, "link must be 32 bytes");
        goto done;
    }
    const uint8_t *data = buf.buf;
    uint8_t link[32];
    memcpy(link, PyBytes_AS_STRING(link_obj), 32);
    /* What the complete batches so far add up to, and the open row (extended batch by batch). */
    unsigned long long events = 0, payload_bytes = 0, stored_bytes = 0;
    uint64_t row_gp = 0, row_offset = 0, row_ts = 0, row_next_gp = 0;
    Py_ssize_t row_position = 0, row_next_position = -1;
    /* The batch being read: where it began, and what it holds so far. */
    Py_ssize_t batch_at = at, batch_position = position;
    uint64_t batch_gp = 0, batch_ts = 0;
    unsigned long long batch_events = 0, batch_payload = 0;
    Py_ssize_t batch_count = 0, batch_checkpoints = 0;
    uint64_t cursor_expected = expected, cursor_last = last_position;
    uint8_t cursor_link[32];
    memcpy(cursor_link, link, 32);
    Py_ssize_t cursor_at = at, cursor_position = position;
    pending_checkpoints = PyList_New(0);
    if (pending_checkpoints == NULL) goto done;
    int need_more = 0; /* stopped at the end of ``buf``, not at a frame it does not take */
    while (cursor_position < end) {
        if (buf.len - cursor_at < HEADER) {
            need_more = 1;
            break;
        }
        const uint8_t *h = data + cursor_at;
        uint32_t stored_len = load32(h + 40), raw_len = load32(h + 44);
        uint8_t kind = h[5], flags = h[6];
        uint64_t offset = load64(h + 16), gp = load64(h + 24), ts = load64(h + 32);
        Py_ssize_t size = HEADER + (Py_ssize_t)stored_len;
        if (memcmp(h, MAGIC, 4) != 0 || h[4] != 2 || h[7] != 0 || kind > 1 || (flags != 0 && flags != FLAG_BATCH_END)
            || stored_len != raw_len || stored_len > MAX_STORED_LEN)
            break; /* a repair marker (kind 2), a compressed or unknown frame: the Python scan's */
        if (gp <= cursor_last || load64(h + 8) != sid || offset != cursor_expected || cursor_position + size > end
            || memcmp(h + 48, cursor_link, 32) != 0)
            break;
        if (buf.len - cursor_at < size) {
            need_more = 1;
            break;
        }
        if (batch_count > 0 && (ts != batch_ts || gp != batch_gp + (uint64_t)batch_count)) break;
        uint8_t own[32];
        if (record_hash(h, h + HEADER, stored_len, long_hash, own) < 0) goto done;
        if (memcmp(own, h + HASHED, 32) != 0) break;
        if (batch_count == 0) {
            batch_gp = gp;
            batch_ts = ts;
        }
        /* the record joins the open row (its frame end relative to the row's first frame) */
        int continues = row.count > 0 && (batch_count > 0 || (gp == row_next_gp && ts == row_ts
                                                               && cursor_position == row_next_position));
        if (!continues && batch_count == 0 && row.count > 0) {
            if (close_row(rows, sid_obj, row_gp, row_offset, segment_no, row_position, row_ts, &row) < 0) goto done;
        }
        if (row.count == 0) {
            row_gp = gp;
            row_offset = offset;
            row_ts = ts;
            row_position = cursor_position;
        }
        if (row_reserve(&row, row.count + 1) < 0) {
            PyErr_NoMemory();
            goto done;
        }
        row.ends[row.count] = (uint32_t)(cursor_position + size - row_position);
        row.kinds[row.count] = kind;
        row.count++;
        batch_count++;
        if (kind == 1) {
            PyObject *checkpoint = Py_BuildValue("(Ky#K)", (unsigned long long)offset, (const char *)own,
                                                 (Py_ssize_t)32, (unsigned long long)ts);
            if (checkpoint == NULL || PyList_Append(pending_checkpoints, checkpoint) < 0) {
                Py_XDECREF(checkpoint);
                goto done;
            }
            Py_DECREF(checkpoint);
            batch_checkpoints++;
        } else {
            batch_events++;
            batch_payload += stored_len;
        }
        memcpy(cursor_link, own, 32);
        cursor_at += size;
        cursor_position += size;
        cursor_expected = offset + 1;
        cursor_last = gp;
        if (flags & FLAG_BATCH_END) { /* the batch is complete: it counts */
            if (PyList_SetSlice(checkpoints, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, pending_checkpoints) < 0) goto done;
            if (PyList_SetSlice(pending_checkpoints, 0, PY_SSIZE_T_MAX, NULL) < 0) goto done;
            events += batch_events;
            payload_bytes += batch_payload;
            stored_bytes += (unsigned long long)(cursor_position - batch_position);
            batch_at = cursor_at;
            batch_position = cursor_position;
            expected = cursor_expected;
            last_position = cursor_last;
            memcpy(link, cursor_link, 32);
            row_next_gp = cursor_last + 1;
            row_next_position = cursor_position;
            batch_count = 0;
            batch_events = batch_payload = 0;
            batch_checkpoints = 0;
        }
    }
    /* an incomplete last batch is not taken: the open row loses its records */
    row.count -= batch_count;
    if (row.count > 0 && close_row(rows, sid_obj, row_gp, row_offset, segment_no, row_position, row_ts, &row) < 0)
        goto done;
    result = Py_BuildValue("(OOnnKy#KKKKO)", rows, checkpoints, batch_at, batch_position, expected,
                           (const char *)link, (Py_ssize_t)32, last_position, events, payload_bytes, stored_bytes,
                           need_more ? Py_True : Py_False);
done:
    Py_XDECREF(pending_checkpoints);
    Py_XDECREF(rows);
    Py_XDECREF(checkpoints);
    PyMem_Free(row.ends);
    PyMem_Free(row.kinds);
    PyBuffer_Release(&buf);
    return result;
}

/* --- the store's Merkle tree: SHA-256 (FIPS 180-4) and RFC 6962 hashing ------------------------ */

/* The append path hashes every record's leaf entry and, amortised, one inner node per record
 * (catalog_tree.py); these are the C twins of ``framing.leaf_hashes`` and ``merkle.root``. */

static const uint32_t SHA256_K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};
static const uint32_t SHA256_IV[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                      0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};

static inline uint32_t load32_be(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}
static inline void store32_be(uint8_t *p, uint32_t x) {
    p[0] = (uint8_t)(x >> 24); p[1] = (uint8_t)(x >> 16); p[2] = (uint8_t)(x >> 8); p[3] = (uint8_t)x;
}
static inline void store64_be(uint8_t *p, uint64_t x) { store32_be(p, (uint32_t)(x >> 32)); store32_be(p + 4, (uint32_t)x); }

static void sha256_block_portable(uint32_t h[8], const uint8_t block[64]) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) w[i] = load32_be(block + 4 * i);
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + SHA256_K[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

/* The same compression with the x86 SHA extensions (SHA-NI), where the CPU has them: about ten
 * times faster. The state is kept as the instructions want it, two registers of four words:
 * (A, B, E, F) and (C, D, G, H), A and C in the top lanes. SHA256RNDS2 does two rounds with the
 * message words plus constants in the low two lanes of its third operand and returns the new
 * (A, B, E, F); the old (A, B, E, F) is then the new (C, D, G, H). SHA256MSG1 and SHA256MSG2 are
 * the two halves of the message schedule: W[t-16] + s0(W[t-15]), then + W[t-7] and s1(W[t-2]). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI 1

__attribute__((target("sha,sse4.1,ssse3")))
static void sha256_block_sha_ni(uint32_t h[8], const uint8_t block[64]) {
    const __m128i big_endian = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i w[16];  /* w[i]: message words 4i .. 4i + 3, lane j holding word 4i + j */
    for (int i = 0; i < 4; i++) w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 16 * i)), big_endian);
    for (int i = 4; i < 16; i++) {
        __m128i partial = _mm_sha256msg1_epu32(w[i - 4], w[i - 3]);
        partial = _mm_add_epi32(partial, _mm_alignr_epi8(w[i - 1], w[i - 2], 4));  /* + W[t-7] */
        w[i] = _mm_sha256msg2_epu32(partial, w[i - 1]);
    }
    __m128i abcd = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0xB1);      /* B A D C */
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(h + 4)), 0x1B); /* H G F E */
    __m128i abef = _mm_alignr_epi8(abcd, efgh, 8), cdgh = _mm_blend_epi16(efgh, abcd, 0xF0);
    const __m128i abef_in = abef, cdgh_in = cdgh;
    for (int i = 0; i < 16; i++) {
        __m128i words = _mm_add_epi32(w[i], _mm_loadu_si128((const __m128i *)(SHA256_K + 4 * i)));
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, words);                          /* rounds 4i, 4i + 1 */
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(words, 0x0E));  /* 4i + 2, 4i + 3 */
    }
    abef = _mm_shuffle_epi32(_mm_add_epi32(abef, abef_in), 0x1B);  /* A B E F, A in the low lane */
    cdgh = _mm_shuffle_epi32(_mm_add_epi32(cdgh, cdgh_in), 0xB1);  /* G H C D */
    _mm_storeu_si128((__m128i *)h, _mm_blend_epi16(abef, cdgh, 0xF0));
    _mm_storeu_si128((__m128i *)(h + 4), _mm_alignr_epi8(cdgh, abef, 8));
}

static int cpu_has_sha_ni(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1) || !(c & bit_SSSE3)) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & bit_SHA) != 0;
}
#else
#define HAVE_SHA_NI 0
static int cpu_has_sha_ni(void) { return 0; }
#endif

/* The compression the hashing below uses: SHA-NI where the CPU has it (set when the module loads;
 * ``sha256_backend`` tells which, ``use_sha256_backend`` lets the tests run both). */
static void (*sha256_block)(uint32_t h[8], const uint8_t block[64]) = sha256_block_portable;

/* SHA-256 of ``prefix`` (one byte) followed by ``len`` bytes of ``in``: RFC 6962's leaf (0x00) and
 * node (0x01) hashes. */
static void sha256_prefixed(uint8_t prefix, const uint8_t *in, size_t len, uint8_t out[32]) {
    uint32_t h[8];
    uint8_t block[64];
    size_t total = len + 1, fill = 1, at = 0;
    memcpy(h, SHA256_IV, sizeof h);
    block[0] = prefix;
    for (;;) {
        size_t n = len - at < 64 - fill ? len - at : 64 - fill;
        memcpy(block + fill, in + at, n);
        at += n;
        fill += n;
        if (fill < 64) break;
        sha256_block(h, block);
        fill = 0;
    }
    block[fill++] = 0x80;  /* the padding: 0x80, zeros, then the length in bits, big-endian */
    if (fill > 56) {
        memset(block + fill, 0, 64 - fill);
        sha256_block(h, block);
        fill = 0;
    }
    memset(block + fill, 0, 56 - fill);
    store64_be(block + 56, (uint64_t)total * 8);
    sha256_block(h, block);
    for (int i = 0; i < 8; i++) store32_be(out + 4 * i, h[i]);
}

enum { LEAF_ENTRY = 58, LEAF_VERSION = 1, KIND_AT = 5 };

static PyObject *py_tree_leaves(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data;
    PyObject *ends;
    unsigned long long sid, offset, timestamp;
    if (!PyArg_ParseTuple(args, "y*OKKK", &data, &ends, &sid, &offset, &timestamp)) return NULL;
    PyObject *seq = PySequence_Fast(ends, "ends must be a sequence"), *result = NULL;
    if (seq == NULL) goto done;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq), start = 0;
    result = PyList_New(count);
    if (result == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t end = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(seq, i));
        if (end == -1 && PyErr_Occurred()) goto fail;
        if (end < start + HEADER || end > data.len) {
            PyErr_SetString(PyExc_ValueError, "a frame end is out of the data's range");
            goto fail;
        }
        const uint8_t *frame = (const uint8_t *)data.buf + start;
        uint8_t entry[LEAF_ENTRY], leaf[32];
        entry[0] = LEAF_VERSION;
        entry[1] = frame[KIND_AT];
        store64_be(entry + 2, sid);
        store64_be(entry + 10, offset + (uint64_t)i);
        store64_be(entry + 18, timestamp);
        memcpy(entry + 26, frame + HASHED, 32);
        sha256_prefixed(0x00, entry, LEAF_ENTRY, leaf);
        PyObject *item = PyBytes_FromStringAndSize((const char *)leaf, 32);
        if (item == NULL) goto fail;
        PyList_SET_ITEM(result, i, item);
        start = end;
    }
    goto done;
fail:
    Py_CLEAR(result);
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&data);
    return result;
}

/* RFC 6962's Merkle Tree Hash over ``n`` (>= 1) hashes laid end to end: split at the largest power
 * of two below ``n``. */
static void merkle_root(const uint8_t *hashes, size_t n, uint8_t out[32]) {
    if (n == 1) {
        memcpy(out, hashes, 32);
        return;
    }
    size_t k = 1;
    while (k << 1 < n) k <<= 1;
    uint8_t pair[64];
    merkle_root(hashes, k, pair);
    merkle_root(hashes + 32 * k, n - k, pair + 32);
    sha256_prefixed(0x01, pair, 64, out);
}

static PyObject *py_merkle_root(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer hashes;
    if (!PyArg_ParseTuple(args, "y*", &hashes)) return NULL;
    PyObject *result = NULL;
    if (hashes.len == 0 || hashes.len % 32 != 0) {
        PyErr_SetString(PyExc_ValueError, "hashes must be one or more 32-byte hashes laid end to end");
    } else {
        uint8_t root[32];
        merkle_root(hashes.buf, (size_t)hashes.len / 32, root);
        result = PyBytes_FromStringAndSize((const char *)root, 32);
    }
    PyBuffer_Release(&hashes);
    return result;
}

/* --- the module ------------------------------------------------------------------------------------ */

static PyObject *py_sha256_backend(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
#if HAVE_SHA_NI
    if (sha256_block == sha256_block_sha_ni) return PyUnicode_FromString("sha-ni");
#endif
    return PyUnicode_FromString("portable");
}

static PyObject *py_sha256_backends(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    return cpu_has_sha_ni() ? Py_BuildValue("[ss]", "portable", "sha-ni") : Py_BuildValue("[s]", "portable");
}

static PyObject *py_use_sha256_backend(PyObject *Py_UNUSED(self), PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL) return NULL;
    if (strcmp(name, "portable") == 0) {
        sha256_block = sha256_block_portable;
#if HAVE_SHA_NI
    } else if (strcmp(name, "sha-ni") == 0 && cpu_has_sha_ni()) {
        sha256_block = sha256_block_sha_ni;
#endif
    } else {
        PyErr_Format(PyExc_ValueError, "no SHA-256 backend %R on this machine", arg);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"sha256_backend", py_sha256_backend, METH_NOARGS, "sha256_backend() -> str: the compression in use."},
    {"sha256_backends", py_sha256_backends, METH_NOARGS,
     "sha256_backends() -> list[str]: the compressions this CPU can run."},
    {"use_sha256_backend", py_use_sha256_backend, METH_O,
     "use_sha256_backend(name): use 'portable' or 'sha-ni' (the tests run both)."},
    {"record_hash", py_record_hash, METH_VARARGS,
     "record_hash(header, payload, long_hash) -> bytes: a format-2 record's hash (record.py)."},
    {"frame_plain", py_frame_plain, METH_VARARGS,
     "frame_plain(out, records, stream_id, first_offset, first_global_position, timestamp_ns, prev_hash,"
     " batch_end, long_hash) -> (ends, specials, last_hash): record.append_frames without compression."},
    {"bind_record", py_bind_record, METH_O, "bind_record(Record): the class walk_plain builds."},
    {"walk_plain", py_walk_plain, METH_VARARGS,
     "walk_plain(buf, at, position, end, stream_id, expected, link, anchor, head_offset, head, last_position,"
     " kinds, frames, long_hash) -> (items, at, position, expected, link, last_position)."},
    {"scan_plain", py_scan_plain, METH_VARARGS,
     "scan_plain(buf, at, position, end, stream_id, expected, link, last_position, segment_no, long_hash) ->"
     " (rows, checkpoints, at, position, expected, link, last_position, events, payload_bytes, stored_bytes,"
     " need_more): the batches rows of the complete batches of plain events and checkpoints from ``at`` (a"
     " rebuild's scan); need_more: it stopped at the end of ``buf``, not at a frame it does not take."},
    {"tree_leaves", py_tree_leaves, METH_VARARGS,
     "tree_leaves(data, ends, stream_id, first_offset, timestamp_ns) -> list[bytes]: the Merkle tree leaf hash"
     " of each format-2 frame of a batch (framing.leaf_hashes)."},
    {"merkle_root", py_merkle_root, METH_VARARGS,
     "merkle_root(hashes) -> bytes: RFC 6962's root over 32-byte hashes laid end to end (merkle.root)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", "The hot loops of format 2 in C.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
#if HAVE_SHA_NI
    if (cpu_has_sha_ni()) sha256_block = sha256_block_sha_ni;
#endif
    return PyModule_Create(&module);
}

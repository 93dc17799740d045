/* A PNG that is all header: the signature, an IHDR of w x h 8-bit RGB and an IEND, with no
 * pixel data. Its header says what a decompression bomb's says (a 6000x6000 one decodes
 * to 144 MB) in 45 bytes; decoders that read the header first refuse it before decoding.
 * Shared by the backend and the integration tests; header-only, static functions. */
#ifndef LARDER_TESTS_PNG_HEADER_H
#define LARDER_TESTS_PNG_HEADER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PNG_HEADER_LEN 45

static inline uint32_t png_header_crc(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;

    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

static inline void png_header_be32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (24 - 8 * i));
}

/* Writes PNG_HEADER_LEN bytes into out. */
static inline void png_header_only(unsigned char *out, uint32_t w, uint32_t h)
{
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    static const unsigned char iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D',
                                           0xAE, 0x42, 0x60, 0x82};

    memcpy(out, sig, 8);
    png_header_be32(out + 8, 13);
    memcpy(out + 12, "IHDR", 4);
    png_header_be32(out + 16, w);
    png_header_be32(out + 20, h);
    memcpy(out + 24, "\x08\x02\x00\x00\x00", 5); /* 8 bits, RGB, deflate, no filter/interlace */
    png_header_be32(out + 29, png_header_crc(out + 12, 17));
    memcpy(out + 33, iend, 12);
}

#endif

/* SHA-256 (FIPS 180-4), for the bundle header's checksum. */
#ifndef EDGERUN_SHA256_H
#define EDGERUN_SHA256_H

#include <stddef.h>
#include <stdint.h>

void er_sha256(const uint8_t *data, size_t size, uint8_t digest[32]);

#endif

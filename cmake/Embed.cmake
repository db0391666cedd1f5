# cmake -DIN=file -DOUT=file.c -DSYMBOL=name -P Embed.cmake
# Writes a C file defining `const unsigned char SYMBOL[]` (NUL-terminated) and `SYMBOL_len`.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR len "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" body "${body}")
file(WRITE ${OUT} "/* Generated from ${IN} by cmake/Embed.cmake; do not edit. */\n#include <stddef.h>\n")
file(APPEND ${OUT} "extern const unsigned char ${SYMBOL}[];\nextern const size_t ${SYMBOL}_len;\n")
file(APPEND ${OUT} "const unsigned char ${SYMBOL}[] = {\n${body}0x00};\nconst size_t ${SYMBOL}_len = ${len};\n")

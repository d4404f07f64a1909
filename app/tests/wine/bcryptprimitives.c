/* The one function Rust's standard library takes from bcryptprimitives.dll, for the Windows smoke test:
 * Wine 8 (Debian 12's) has no such DLL, so pgwi.exe would not load there. ProcessPrng fills a buffer with
 * random bytes, here from advapi32's RtlGenRandom (SystemFunction036), which Wine has. Built with
 * Debian's MinGW-w64 next to the test's copy of pgwi.exe; never shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}

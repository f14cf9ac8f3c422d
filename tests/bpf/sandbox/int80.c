/* Calls unshare(0) through the 32-bit int 0x80 ABI from a 64-bit process (i386 number
 * 310): per-syscall tracepoints never see such calls; the seccomp filter must. */
#include <stdio.h>
int main(void)
{
	long ret;
	printf("{\"step\": \"calling\", \"name\": \"unshare-int80\"}\n");
	fflush(stdout);
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(310), "b"(0) : "memory");
	printf("{\"step\": \"returned\", \"name\": \"unshare-int80\", \"rc\": %ld}\n", ret);
	return 0;
}

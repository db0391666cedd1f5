# The house warning set (issue 2); -Werror when LIM_WERROR is on (CI).
function(lim_warnings target)
    target_compile_options(${target} PRIVATE
        -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
        -Wformat=2 -Wvla -Wpointer-arith -Wundef)
    if(LIM_WERROR)
        target_compile_options(${target} PRIVATE -Werror)
    endif()
endfunction()
